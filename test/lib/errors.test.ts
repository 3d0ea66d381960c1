/**
 * The error codes are a public contract: each one is raised somewhere (a code nothing throws is a
 * promise the API does not keep), and a peer's code survives the wire as the same code.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FERRY_ERROR_CODES, FerryError, isFerryErrorCode } from '../../src/lib/errors.js';
import { HTTP_STATUS_BY_CODE } from '../../src/api/http-status.js';

const SRC = fileURLToPath(new URL('../../../src/', import.meta.url));
/** Where codes are declared or mapped, not raised. */
const DECLARING = new Set(['lib/errors.ts', 'api/http-status.ts']);

async function sources(dir: string, rel = ''): Promise<{ path: string; text: string }[]> {
  const out: { path: string; text: string }[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(rel, e.name);
    if (e.isDirectory()) out.push(...await sources(join(dir, e.name), p));
    else if (e.name.endsWith('.ts') && !DECLARING.has(p)) out.push({ path: p, text: await readFile(join(dir, e.name), 'utf8') });
  }
  return out;
}

describe('error codes', () => {
  it('every code is raised somewhere in src/', async () => {
    const files = await sources(SRC);
    assert.ok(files.length > 50, `read the source tree (${files.length} files under ${SRC})`);
    const unused = FERRY_ERROR_CODES.filter((code) => !files.some((f) => f.text.includes(`'${code}'`)));
    assert.deepEqual(unused, [], 'codes that nothing raises: use them or remove them');
  });

  it('every code has an HTTP status, and only known codes do', () => {
    assert.deepEqual(Object.keys(HTTP_STATUS_BY_CODE).sort(), [...FERRY_ERROR_CODES].sort());
    for (const [code, status] of Object.entries(HTTP_STATUS_BY_CODE)) assert.ok(status >= 400 && status < 600, `${code} -> ${status}`);
  });

  it('a peer\'s known code is kept, marked remote; an unknown one falls back and is kept in details', () => {
    const known = FerryError.fromRemote('DIGEST_MISMATCH', 'x', 'MIGRATION_FAILED');
    assert.equal(known.code, 'DIGEST_MISMATCH');
    assert.equal(known.origin, 'remote');
    const unknown = FerryError.fromRemote('FROM_THE_FUTURE', 'x', 'HOST_ERROR');
    assert.equal(unknown.code, 'HOST_ERROR');
    assert.equal(unknown.details.remoteCode, 'FROM_THE_FUTURE');
    assert.equal(new FerryError('INTERNAL', 'x').origin, 'local');
    assert.equal(isFerryErrorCode('toString'), false, 'no prototype keys');
    assert.equal(isFerryErrorCode(42), false);
  });
});
