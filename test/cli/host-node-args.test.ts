/**
 * $FERRY_HOST_NODE_ARGS: the Node options a benchmark's or demo's host processes get (profiling and
 * diagnostics only): what passes, and that anything else — a flag that runs code, a path with spaces
 * smuggled in — is refused with a clear error.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { HOST_NODE_ARGS_ENV, hostNodeArgs } from '../../src/cli/local-hosts.js';

describe('FERRY_HOST_NODE_ARGS', () => {
  it('passes profiling and diagnostics options, nothing when unset or blank', () => {
    assert.deepEqual(hostNodeArgs({}), []);
    assert.deepEqual(hostNodeArgs({ [HOST_NODE_ARGS_ENV]: '   ' }), []);
    assert.deepEqual(hostNodeArgs({ [HOST_NODE_ARGS_ENV]: ' --cpu-prof  --cpu-prof-dir=/tmp/p --trace-gc ' }), ['--cpu-prof', '--cpu-prof-dir=/tmp/p', '--trace-gc']);
  });

  it('refuses anything else, naming it', () => {
    for (const bad of ['--require=/tmp/x.js', '--import=data:text/javascript,1', '-e', 'console.log(1)', '--cpu-prof-dir=', '--inspect=0.0.0.0:9229']) {
      assert.throws(() => hostNodeArgs({ [HOST_NODE_ARGS_ENV]: `--cpu-prof ${bad}` }), (err: Error & { code?: string }) => err.code === 'INVALID_ARGUMENT' && err.message.includes(bad), bad);
    }
  });
});
