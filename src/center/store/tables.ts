/**
 * The tables as Kysely sees them (what migrations/ create). Shared by both backends, so each column
 * has a type both hold the same way: times are integer milliseconds since the epoch (`bigint`, read
 * back as numbers), flags are 0/1 integers (SQLite has no boolean, better-sqlite3 binds none), JSON is
 * text (SQLite has no JSON type and no query looks inside a document; the store parses and checks it).
 */
import type { Generated } from 'kysely';

export interface SitesTable {
  name: string;
  description: string;
  created_at_ms: number;
  /** Canonical CIDR text (schema 6); null until first needed (migrations/0006-mobility-paths.ts). */
  virtual_subnet: string | null;
}

export interface HostsTable {
  name: string;
  site: string;
  url: string;
  state: string;
  memory_bytes: number;
  vcpus: number;
  last_heartbeat_at_ms: number | null;
  created_at_ms: number;
  updated_at_ms: number;
  /** JSON text: the path drivers the host reported (schema 6), null until it does. */
  data_plane: string | null;
}

export interface DatastoresTable {
  id: string;
  name: string;
  shared: number;
  created_at_ms: number;
}

export interface HostDatastoresTable {
  host: string;
  datastore_id: string;
  mount_name: string;
  capacity_bytes: number | null;
  free_bytes: number | null;
  space_at_ms: number | null;
}

export interface VmsTable {
  name: string;
  host: string | null;
  state: string;
  config_json: string;
  disks_json: string;
  created_at_ms: number;
  updated_at_ms: number;
}

export interface TasksTable {
  id: Generated<number>;
  kind: string;
  target: string;
  state: string;
  phase: string;
  progress: number;
  waiting_reason: string | null;
  requested_by: string;
  params_json: string;
  created_at_ms: number;
  started_at_ms: number | null;
  ended_at_ms: number | null;
  result_json: string | null;
  error_code: string | null;
  error_message: string | null;
  claimed_by: string | null;
  claim_expires_at_ms: number | null;
  attempts: number;
  cancel_requested: number;
  /** 0 until the scheduler admits it (schema 4); tasks that cost nothing are enqueued admitted. */
  admitted: Generated<number>;
  plan_json: string | null;
  checkpoint_json: string | null;
  /** The move directive (schema 7): 0 until first asked, +1 per request. */
  move_seq: Generated<number>;
  move_to: string | null;
  move_requested_by: string | null;
  move_requested_at_ms: number | null;
}

export interface EventsTable {
  id: number;
  at_ms: number;
  kind: string;
  subject: string;
  payload_json: string;
}

/** Named counters: `events` hands out event ids (see appendEvent in ./kysely-store.ts for why not a sequence). */
export interface CountersTable {
  name: string;
  value: number;
}

export interface DutiesTable {
  name: string;
  holder: string;
  expires_at_ms: number;
  epoch: number;
}

/** API tokens, join tokens and host credentials: only a hash of each secret (see ../auth.ts). */
export interface CredentialsTable {
  id: string;
  kind: string;
  subject: string;
  secret_hash: string;
  created_at_ms: number;
  expires_at_ms: number | null;
  spent_at_ms: number | null;
  revoked_at_ms: number | null;
}

/** Secrets all centers of one database share (schema 4). */
export interface CenterSecretsTable {
  name: string;
  value: string;
  created_at_ms: number;
}

/** The fleet's CA (one row, id 'ca'; see migrations/0005-tls.ts). */
export interface CenterCaTable {
  id: string;
  cert_pem: string;
  key_pem: string;
  created_at_ms: number;
}

/** Certificates issued to hosts, each tied to the host credential issued with it. */
export interface HostCertificatesTable {
  fingerprint: string;
  host: string;
  credential_id: string;
  serial: string;
  created_at_ms: number;
  not_after_ms: number;
}

/** One operation's virtual path (schema 6). `secret` is stored so any center can re-push or release it. */
export interface MobilityPathsTable {
  path_id: string;
  task_id: number | null;
  kind: string;
  source_host: string;
  target_host: string;
  source_site: string;
  target_site: string;
  source_address: string;
  target_address: string;
  vni: number;
  first_port: number;
  port_count: number;
  driver: string;
  secret: string;
  state: string;
  created_at_ms: number;
  expires_at_ms: number;
  released_at_ms: number | null;
  release_reason: string | null;
}

/** Each address a live path holds, once: the database's guarantee that no two live paths share one. */
export interface MobilityAddressesTable {
  address: string;
  path_id: string;
  site: string;
}

export interface StoreDatabase {
  sites: SitesTable;
  hosts: HostsTable;
  datastores: DatastoresTable;
  host_datastores: HostDatastoresTable;
  vms: VmsTable;
  tasks: TasksTable;
  events: EventsTable;
  counters: CountersTable;
  duties: DutiesTable;
  credentials: CredentialsTable;
  center_secrets: CenterSecretsTable;
  center_ca: CenterCaTable;
  host_certificates: HostCertificatesTable;
  mobility_paths: MobilityPathsTable;
  mobility_addresses: MobilityAddressesTable;
}
