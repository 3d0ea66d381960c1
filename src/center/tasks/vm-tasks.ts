/**
 * VM lifecycle tasks: create (on a chosen host or one the placement picks), start, stop, delete. Each
 * asks the VM's host through its typed client and records what the host answered — the host is the
 * truth for its VMs; the inventory row follows it.
 *
 * Create is made safe to repeat: the API reserves the name (a row on no host) before the task exists;
 * the worker checkpoints the host it chose before asking it, so a successor asks the same host and
 * takes "already exists" there as done. A create that fails leaves no row behind.
 */
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { FerryError, errorMessage, isFerryError } from '../../lib/errors.js';
import type { CreateVmRequest, VmView } from '../../api/host-v1.js';
import { BUILTIN_IMAGE_PATTERN, MAX_CENTER_IMAGE_BYTES } from '../../api/center-v1.js';
import type { HostControl } from '../host-control.js';
import { vmRecord } from '../inventory.js';
import type { HostClient } from '../../api/host-client.js';
import { best, fits, noFitReason } from '../placement.js';
import type { CenterStore } from '../store/store.js';
import type { JsonValue } from '../store/model.js';
import { createVmParamsSchema, readStored, vmParamsSchema } from './kinds.js';
import type { TaskContext, TaskHandler } from './workers.js';

/** A started VM is running within this (its image instrumented, its vCPUs spawned) on a loaded host. */
const BOOT_WAIT_MS = 30_000;
/** How often the host is asked whether the VM has booted. */
const BOOT_POLL_MS = 50;
const createCheckpointSchema = z.object({ host: z.string() }).strict();
/** Images built with Ferry, as the center's installation holds them (dist/guests). */
const BUILTIN_IMAGES_DIR = new URL('../../../guests/', import.meta.url);

export interface VmTaskDeps {
  readonly store: CenterStore;
  readonly hosts: HostControl;
  readonly event: (kind: string, subject: string, payload: JsonValue) => Promise<void>;
}

/** A built-in image's bytes (IMAGE_INVALID if there is none of that name). */
export async function builtinImage(name: string): Promise<Buffer> {
  if (!BUILTIN_IMAGE_PATTERN.test(name)) throw new FerryError('IMAGE_INVALID', `"${name}" is not an image name`);
  try {
    const bytes = await readFile(fileURLToPath(new URL(`${name}.wasm`, BUILTIN_IMAGES_DIR)));
    if (bytes.length > MAX_CENTER_IMAGE_BYTES) throw new FerryError('IMAGE_TOO_LARGE', `image ${name} is ${bytes.length} bytes; the center passes at most ${MAX_CENTER_IMAGE_BYTES}`);
    return bytes;
  } catch (err) {
    if (isFerryError(err)) throw err;
    throw new FerryError('IMAGE_INVALID', `no image "${name}" is built with this Ferry (${errorMessage(err)})`);
  }
}

async function recordVm(d: VmTaskDeps, host: string, v: VmView, reason: string): Promise<void> {
  const { config, disks } = vmRecord({ memoryBytes: v.config.memoryBytes, vcpus: v.config.vcpus, disk: v.disk });
  const before = await d.store.getVm(v.name).catch(() => null);
  await d.store.upsertVm({ name: v.name, host, state: v.state, config, disks });
  await d.event('vm.changed', `vm:${v.name}`, { vm: v.name, host, state: v.state, from: before === null ? null : { host: before.host, state: before.state }, reason });
}

export function createVmTask(d: VmTaskDeps): TaskHandler {
  return async (ctx) => {
    const p = readStored(createVmParamsSchema, ctx.task.params, 'parameters');
    try {
      const stored = createCheckpointSchema.safeParse(ctx.task.checkpoint);
      const hostName = stored.success ? stored.data.host : await place(d, ctx, p.host, p.memoryBytes, p.disk?.datastore ?? null);
      if (!stored.success) await ctx.checkpoint({ host: hostName });
      const host = await d.store.getHost(hostName);
      const client = d.hosts.client(host);
      await ctx.progress(0.3, `creating ${p.name} on ${hostName}`);
      const image = p.image !== undefined ? (await builtinImage(p.image)).toString('base64') : (p.imageBase64 ?? '');
      const req: CreateVmRequest = {
        name: p.name, imageBase64: image, memoryBytes: p.memoryBytes, start: p.start ?? true,
        ...(p.vcpus !== undefined ? { vcpus: p.vcpus } : {}), ...(p.cmdline !== undefined ? { cmdline: p.cmdline } : {}),
        ...(p.granularityBytes !== undefined ? { granularityBytes: p.granularityBytes } : {}), ...(p.disk !== undefined ? { disk: p.disk } : {}),
      };
      let view: VmView;
      try {
        view = await client.createVm(req);
      } catch (err) {
        // Asked before by a worker that died: the host has it already.
        if (!(stored.success && isFerryError(err) && err.code === 'ALREADY_EXISTS')) throw err;
        view = await client.vm(p.name);
      }
      // Started: the task ends when the VM runs (or could not), not while it is still booting.
      if (req.start === true) view = await settled(client, view, ctx);
      await recordVm(d, hostName, view, 'created');
      if (view.state === 'crashed') throw new FerryError('VM_CRASHED', `VM ${p.name} crashed while starting on ${hostName}: ${view.crash?.message ?? 'no reason given'}`);
      return { vm: p.name, host: hostName, state: view.state };
    } catch (err) {
      // Nothing was created where the inventory could not see it: release the reserved name. (A host
      // that did create it reports it in its next heartbeat, which records it again.)
      const row = await d.store.getVm(p.name).catch(() => null);
      if (row !== null && row.host === null) await d.store.deleteVm(p.name).catch(() => undefined);
      throw err;
    }
  };
}

/** The host's view of a VM once it has left `created` (booting), within BOOT_WAIT_MS. */
async function settled(client: HostClient, view: VmView, ctx: TaskContext): Promise<VmView> {
  const deadline = performance.now() + BOOT_WAIT_MS;
  let v = view;
  while (v.state === 'created' && performance.now() < deadline && !ctx.signal.aborted) {
    await new Promise((resolve) => setTimeout(resolve, BOOT_POLL_MS));
    v = await client.vm(v.name);
  }
  return v;
}

async function place(d: VmTaskDeps, ctx: TaskContext, asked: string | undefined, memoryBytes: number, diskDatastore: string | null): Promise<string> {
  await ctx.progress(0.1, asked === undefined ? 'placing' : `checking host ${asked}`);
  const needs = { memoryBytes, diskDatastoreId: null, diskDestination: diskDatastore };
  const all = await fits(d.store, needs, new Map(), new Set());
  const pool = asked === undefined ? all : all.filter((c) => c.host.name === asked);
  if (asked !== undefined && pool.length === 0) throw new FerryError('NOT_FOUND', `host ${asked} is not in the inventory`);
  const chosen = best(pool, () => 0);
  if (chosen === null) throw new FerryError('NO_COMPATIBLE_HOST', noFitReason(pool));
  return chosen.host.name;
}

/** start / stop: the VM's host does it; the row takes the host's answer. */
export function powerTask(d: VmTaskDeps, action: 'start' | 'stop'): TaskHandler {
  return async (ctx) => {
    const { vm } = readStored(vmParamsSchema, ctx.task.params, 'parameters');
    const row = await d.store.getVm(vm);
    if (row.host === null) throw new FerryError('VM_STATE', `VM ${vm} is on no host yet`);
    const host = await d.store.getHost(row.host);
    if (host.state === 'disconnected') throw new FerryError('HOST_STATE', `host ${host.name} is disconnected; VM ${vm} is unknown until it is back`);
    await ctx.progress(0.5, `${action} ${vm} on ${host.name}`);
    const client = d.hosts.client(host);
    const view = action === 'start' ? await client.startVm(vm) : await client.stopVm(vm);
    await recordVm(d, host.name, view, action === 'start' ? 'started' : 'stopped');
    return { vm, host: host.name, state: view.state };
  };
}

export function deleteVmTask(d: VmTaskDeps): TaskHandler {
  return async (ctx) => {
    const { vm } = readStored(vmParamsSchema, ctx.task.params, 'parameters');
    const row = await d.store.getVm(vm);
    if (row.host !== null) {
      const host = await d.store.getHost(row.host);
      if (host.state === 'disconnected') throw new FerryError('HOST_STATE', `host ${host.name} is disconnected: VM ${vm} cannot be removed from it now`);
      await ctx.progress(0.5, `deleting ${vm} on ${host.name}`);
      try { await d.hosts.client(host).deleteVm(vm); } catch (err) {
        if (!(isFerryError(err) && err.code === 'NOT_FOUND')) throw err;
      }
    }
    await d.store.deleteVm(vm);
    await d.event('vm.deleted', `vm:${vm}`, { vm, host: row.host });
    return { vm, deleted: true };
  };
}
