// Errors of `weftctl install`. Each has a stable `code` and a one-line message that names the
// option or file at fault and says what to give instead.

/** An install option with a value Weft cannot render (empty image, illegal trust domain, ...). */
export class InstallOptionError extends Error {
  readonly code = 'WEFT_INSTALL_BAD_OPTION';
  /** The option at fault, as the renderer names it (`image`, `trustDomain`, ...). */
  readonly option: string;
  constructor(option: string, message: string) {
    super(message);
    this.name = 'InstallOptionError';
    this.option = option;
  }
}

/** A file under the CRD folder that is not YAML or not a CustomResourceDefinition. */
export class CrdLoadError extends Error {
  readonly code = 'WEFT_INSTALL_BAD_CRD';
  readonly file: string;
  constructor(file: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CrdLoadError';
    this.file = file;
  }
}
