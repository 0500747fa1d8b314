// The controller logs through the shared JSON-lines logger.
export { isLogLevel, jsonLogger, silentLogger, type Logger, type LogFields, type LogLevel } from '../../lib/log.ts';
