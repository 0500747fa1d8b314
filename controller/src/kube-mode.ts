// Everything the controller needs only in Kubernetes mode (--kube), in one module that main.ts
// imports when that mode is asked for. @kubernetes/client-node alone costs about 88 MB of RSS, which a
// controller serving a config directory (the local mesh, tests, benches) never needs; so no module a
// config-directory controller loads imports it (test/unit/controller-main.test.ts checks this).
export { KubeConfig } from '@kubernetes/client-node';
export { clusterCertificateAuthority, clusterDebugToken } from './cluster/ca-secret.ts';
export { EventRecorder } from './cluster/events.ts';
export { LeaseElector } from './cluster/leader.ts';
export { TrustBundlePublisher } from './cluster/trust-bundle.ts';
export { TokenReviewAuthenticator } from './ca/token-review.ts';
export { KubeSource } from './sources/kube.ts';
export { RemoteSecrets, remoteMaxObjects } from './sources/remote-secrets.ts';
export { KubeWaypointDriver } from './waypoints-kube.ts';
