/** A migration target reached through its host agent's API: the engine's MigrationTargetPeer over the typed client. */
import { HostClient } from '../api/host-client.js';
import type { TlsClientOptions } from '../api/tls.js';
import type { IncomingOutcome, IncomingTicket, MigrationTargetPeer } from '../migration/peer.js';

export class HostApiTargetPeer implements MigrationTargetPeer {
  readonly label: string;
  private readonly client: HostClient;
  private readonly host: string;

  /** `tls`: for an https:// target, the CA to trust and this host's certificate. */
  constructor(url: string, token: string, tls: TlsClientOptions = {}) {
    this.client = new HostClient(url, token, tls);
    this.label = this.client.baseUrl;
    // The migration endpoint listens on the same address as the control API.
    this.host = new URL(this.client.baseUrl).hostname.replace(/^\[|\]$/g, '');
  }

  async requestTicket(timeoutMs: number, sourceMigrationId?: string): Promise<IncomingTicket> {
    const t = await this.client.createTicket(timeoutMs, sourceMigrationId !== undefined ? { sourceMigrationId } : {});
    return { migrationId: t.migrationId, ticket: t.ticket, address: { host: this.host, port: t.port }, expiresInMs: t.expiresInMs };
  }

  async incomingOutcome(migrationId: string, timeoutMs: number): Promise<IncomingOutcome> {
    return (await this.client.incoming(migrationId, timeoutMs)).outcome;
  }
}
