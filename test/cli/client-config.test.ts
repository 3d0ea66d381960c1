/**
 * The client config file: where it is ($FERRY_CONFIG, $XDG_CONFIG_HOME, ~/.config), written whole with
 * mode 0600, read back checked, a corrupt one an error naming it; and how the CLI's center access
 * falls back to it (its token only for its own center).
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { CONFIG_ENV, clientConfigPath, readClientConfig, removeClientConfig, writeClientConfig } from '../../src/cli/client-config.js';
import { CENTER_TOKEN_ENV, centerClient } from '../../src/cli/center-access.js';

const TOKEN = `ferry-api-${'A'.repeat(43)}`;
/** Any PEM-shaped text: the config keeps the CA as given (ferry login checked its fingerprint before). */
const CA = { caPem: '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', caFingerprint: 'AB:CD' };

describe('client config file', () => {
  const dirs: string[] = [];
  after(async () => { for (const d of dirs) await rm(d, { recursive: true, force: true }); });

  it('is $FERRY_CONFIG, else under $XDG_CONFIG_HOME, else under ~/.config', () => {
    assert.equal(clientConfigPath({ [CONFIG_ENV]: '/x/c.json', XDG_CONFIG_HOME: '/xdg' }), '/x/c.json');
    assert.equal(clientConfigPath({ XDG_CONFIG_HOME: '/xdg' }), '/xdg/ferry/config.json');
    assert.equal(clientConfigPath({ [CONFIG_ENV]: '', XDG_CONFIG_HOME: '' }), join(homedir(), '.config', 'ferry', 'config.json'));
  });

  it('is written with mode 0600 in a new directory, read back, and a corrupt one is CONFIG_INVALID naming it', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-config-'));
    dirs.push(dir);
    const path = join(dir, 'sub', 'config.json');
    assert.equal(await readClientConfig(path), null, 'none yet');
    await writeClientConfig({ center: 'https://127.0.0.1:7100', token: TOKEN, ...CA, writtenBy: 'ferry up' }, path);
    assert.equal((await stat(path)).mode & 0o777, 0o600);
    assert.deepEqual(await readClientConfig(path), { center: 'https://127.0.0.1:7100', token: TOKEN, ...CA, writtenBy: 'ferry up' });
    await assert.rejects(writeClientConfig({ center: 'http://127.0.0.1:7100', token: TOKEN, ...CA }, path), 'an http:// center is not one');
    await writeFile(path, '[1, 2');
    await assert.rejects(readClientConfig(path), (err: Error & { code?: string }) => err.code === 'CONFIG_INVALID' && err.message.includes(path) && /not JSON/.test(err.message));
    await writeFile(path, JSON.stringify({ center: 'https://127.0.0.1:7100', token: 'secret', ...CA }));
    await assert.rejects(readClientConfig(path), (err: Error & { code?: string }) => err.code === 'CONFIG_INVALID' && /token: must be a Ferry API token/.test(err.message));
    await removeClientConfig(path);
    assert.equal(await readClientConfig(path), null);
  });

  it('gives the CLI its center and token when no --center is given; its token never goes to another center', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ferry-config-'));
    dirs.push(dir);
    const path = join(dir, 'config.json');
    process.env[CONFIG_ENV] = path;
    delete process.env[CENTER_TOKEN_ENV];
    await assert.rejects(centerClient({}), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && err.message.includes(path));
    await writeClientConfig({ center: 'https://127.0.0.1:7100', token: TOKEN, ...CA }, path);
    assert.equal((await centerClient({})).baseUrl, 'https://127.0.0.1:7100');
    assert.equal((await centerClient({ center: 'https://127.0.0.1:7100/' })).baseUrl, 'https://127.0.0.1:7100', 'the same center: its token');
    await assert.rejects(centerClient({ center: 'https://127.0.0.1:7200' }), { code: 'UNAUTHORIZED' }, 'another center gets no token from the file');
    process.env[CENTER_TOKEN_ENV] = TOKEN;
    assert.equal((await centerClient({ center: 'https://127.0.0.1:7200' })).baseUrl, 'https://127.0.0.1:7200', 'the environment still works');
    delete process.env[CENTER_TOKEN_ENV];
  });
});
