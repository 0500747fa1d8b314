/** Test PKI for the HBONE tests: a CA and leaf certificates with SPIFFE URI SANs, made with node-forge. */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import forge from 'node-forge';

export interface TestLeaf {
  key: string;
  cert: string;
  /** The issuing CA's certificate (the trust bundle). */
  ca: string;
  spiffeId: string | undefined;
}

export interface TestCa {
  cert: string;
  key: string;
  /** A leaf for `spiffeId` (or without a URI SAN when undefined), usable as client and server. */
  issue(spiffeId: string | undefined): TestLeaf;
}

function newKey(): { pem: string; forgeKey: forge.pki.rsa.PrivateKey; forgePub: forge.pki.rsa.PublicKey } {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const forgeKey = forge.pki.privateKeyFromPem(pem) as forge.pki.rsa.PrivateKey;
  const forgePub = forge.pki.setRsaPublicKey(forgeKey.n, forgeKey.e);
  return { pem, forgeKey, forgePub };
}

function serial(): string {
  const b = randomBytes(16);
  b[0] = (b[0] ?? 0) & 0x7f;
  return b.toString('hex');
}

export function createTestCa(commonName = 'Weft Test CA'): TestCa {
  const caKey = newKey();
  const caCert = forge.pki.createCertificate();
  caCert.publicKey = caKey.forgePub;
  caCert.serialNumber = serial();
  caCert.validity.notBefore = new Date(Date.now() - 60_000);
  caCert.validity.notAfter = new Date(Date.now() + 24 * 3600_000);
  const caName = [{ name: 'commonName', value: commonName }, { name: 'organizationName', value: 'weft' }];
  caCert.setSubject(caName);
  caCert.setIssuer(caName);
  caCert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    { name: 'subjectKeyIdentifier' },
  ]);
  caCert.sign(caKey.forgeKey, forge.md.sha256.create());
  const caPem = forge.pki.certificateToPem(caCert);

  return {
    cert: caPem,
    key: caKey.pem,
    issue(spiffeId) {
      const k = newKey();
      const c = forge.pki.createCertificate();
      c.publicKey = k.forgePub;
      c.serialNumber = serial();
      c.validity.notBefore = new Date(Date.now() - 60_000);
      c.validity.notAfter = new Date(Date.now() + 3600_000);
      c.setSubject([{ name: 'organizationName', value: 'weft' }]);
      c.setIssuer(caCert.subject.attributes);
      const extensions: object[] = [
        { name: 'basicConstraints', cA: false, critical: true },
        { name: 'keyUsage', digitalSignature: true, keyEncipherment: true, critical: true },
        { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
        { name: 'authorityKeyIdentifier', keyIdentifier: caCert.generateSubjectKeyIdentifier().getBytes() },
      ];
      if (spiffeId !== undefined) {
        extensions.push({ name: 'subjectAltName', critical: true, altNames: [{ type: 6, value: spiffeId }] });
      }
      c.setExtensions(extensions);
      c.sign(caKey.forgeKey, forge.md.sha256.create());
      return { key: k.pem, cert: forge.pki.certificateToPem(c), ca: caPem, spiffeId };
    },
  };
}
