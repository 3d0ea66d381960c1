/**
 * How a center acts on a host: the host's typed client, authenticated by a control credential the
 * center derives for that host. The credential is HMAC-SHA256(key, host name) with a key every center
 * of one database shares (created once, in the store), so any center can act on any host and none
 * stores a host's secret; the host learns its control credential from every heartbeat answer (its
 * own credential authenticates that answer) and accepts it beside its operator token.
 *
 * Why derived and not stored: the store keeps no usable secret (a backup lets nobody act as the center),
 * yet a center that starts after a host joined can still reach it.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { HostClient } from '../api/host-client.js';
import type { Host } from './store/model.js';
import type { CenterStore } from './store/store.js';

/** The shared secret's name in the store. */
export const HOST_CONTROL_KEY = 'host-control-key';
/** A control credential starts so: people and log scrubbers tell it from the host's own credential. */
export const CONTROL_TOKEN_PREFIX = 'ferry-ctl-';
const KEY_BYTES = 32;

export class HostControl {
  private constructor(private readonly key: Buffer, private readonly caPem: string) {}

  /** `caPem`: the fleet's CA, which signed the certificates of hosts that serve HTTPS (ferry host --tls). */
  static async open(store: CenterStore, caPem: string): Promise<HostControl> {
    const key = await store.ensureSecret(HOST_CONTROL_KEY, randomBytes(KEY_BYTES).toString('base64url'));
    return new HostControl(Buffer.from(key, 'base64url'), caPem);
  }

  /** The bearer token the center presents to host `name` (and that a migration's source presents to its target). */
  tokenFor(name: string): string {
    return CONTROL_TOKEN_PREFIX + createHmac('sha256', this.key).update(`host-control:${name}`).digest('base64url');
  }

  client(host: Pick<Host, 'name' | 'url'>): HostClient {
    return new HostClient(host.url, this.tokenFor(host.name), host.url.startsWith('https:') ? { caPem: this.caPem } : {});
  }
}
