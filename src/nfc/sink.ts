/**
 * Where a copy's bytes go: the target side of a network file copy, as the copier sees it. Two
 * implementations, one contract:
 * - the local form's sink writes into a datastore this host mounts (./local-sink.ts);
 * - the remote form's sink is a client of the NFC protocol (./remote-sink.ts): the receiving host runs a
 *   local sink over its own datastore behind ./receiver.ts.
 *
 * The sink owns the truth about how far a copy has got: its journal in the target datastore
 * (docs/design/nfc.md, "Journal") records the durable boundary, and a copy opened again — by the same
 * host after a crash, or by another host after a hand-off — resumes from it, never from what a caller
 * believes. Epochs fence hand-offs: a sink opened under epoch e refuses (COPY_FENCED) once the journal
 * has been opened under a later epoch, so a host that was asked to stop and did not hear it can never
 * write after its successor started.
 */
import type { Boundary, CopiedFile, CopyPlan } from './plan.js';

export interface CopySinkOpen {
  readonly plan: CopyPlan;
  /** The hand-off generation: 1 for the first host, +1 for each hand-off (the center counts). */
  readonly epoch: number;
}

export interface CopySink {
  /** Where this copy resumes: the journal's durable boundary (COPY_START for a new copy). */
  readonly resumeAt: Boundary;
  /**
   * One chunk of file `fileIndex` at `offsetBytes` (a multiple of NFC_CHUNK_BYTES); `sha256` is the
   * source's checksum of it (32 bytes). The remote form verifies it on arrival (CHUNK_CORRUPT: send it
   * again); every form verifies it again when the file is read back at its end.
   */
  write(fileIndex: number, offsetBytes: number, data: Uint8Array, sha256: Uint8Array): Promise<void>;
  /** A chunk that is all zeros: nothing is written (the staging file stays sparse there). */
  hole(fileIndex: number, offsetBytes: number, lengthBytes: number): Promise<void>;
  /**
   * Makes every chunk written so far durable (data, then the journal) and answers the boundary that is
   * now durable: the longest prefix of the plan whose every chunk was written.
   */
  sync(): Promise<Boundary>;
  /**
   * Every chunk of file `fileIndex` has been written: read the staging file back, check each chunk
   * against the source's checksums (COPY_VERIFY_FAILED otherwise, the staging file kept for a resend of
   * the bad chunks is not attempted: the copy fails), rename it into place, journal it.
   */
  finishFile(fileIndex: number): Promise<CopiedFile>;
  /** Every file finished: the journal says complete (a second open answers resumeAt = the end). */
  complete(): Promise<readonly CopiedFile[]>;
  /** Closes without finishing: the journal and the staging files stay for a resume. Idempotent. */
  close(): Promise<void>;
  /** Gives the copy up: staging files and journal removed (a cancelled copy leaves nothing behind). */
  discard(): Promise<void>;
}
