// The mesh model: input objects, the compiled model, validation. Import from here.
export * from './objects.ts';
export type * as mesh from './mesh.ts';
export {
  DEFAULT_CLUSTER_DOMAIN,
  DEFAULT_ROOT_NAMESPACE,
  DEFAULT_TRUST_DOMAIN,
  HBONE_PORT,
  labelsMatch,
  nsName,
  policySelectsWorkload,
  spiffeIdOf,
} from './mesh.ts';
export { validateObject, assertValid, isCidr, L4_CONDITION_KEYS, L7_CONDITION_KEYS } from './validate.ts';
export { ValidationError, DurationError, formatIssue, type ValidationIssue } from './errors.ts';
export { parseDuration, isDuration } from './duration.ts';
export { workloadNameOf, canonicalOf, workloadMetaOf, DEFAULT_CLUSTER_ID, LABEL_CANONICAL_NAME, LABEL_CANONICAL_REVISION, type WorkloadMeta } from './workload-meta.ts';
