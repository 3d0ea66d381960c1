/** The virtual subnets' CIDR arithmetic (src/center/mobility/subnets.ts): pure, so tested exhaustively at the edges. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_SUBNET_COUNT, addressInCidr, cidrContains, cidrsOverlap, defaultSiteSubnet, formatCidr, intToIpv4, ipv4ToInt, lowestFreeDefaultSubnet,
  nthUsableAddress, parseCidr, parseSiteSubnet, usableAddressCount, usableIndexOf,
} from '../../../src/center/mobility/subnets.js';

describe('IPv4 addresses', () => {
  it('round-trips dotted quads and refuses what is not canonical', () => {
    for (const a of ['0.0.0.0', '100.64.0.1', '255.255.255.255', '10.0.0.255']) assert.equal(intToIpv4(ipv4ToInt(a)), a);
    assert.equal(ipv4ToInt('100.64.0.0'), 0x6440_0000);
    for (const bad of ['256.0.0.1', '01.2.3.4', '1.2.3', '1.2.3.4.5', ' 1.2.3.4', '1.2.3.-4', '', 'a.b.c.d', '1.2.3.4\n']) {
      assert.throws(() => ipv4ToInt(bad), { code: 'INVALID_ARGUMENT' }, bad);
    }
  });
});

describe('CIDR blocks', () => {
  it('parses canonical blocks; refuses set host bits, bad prefixes and junk', () => {
    assert.deepEqual(parseCidr('100.64.0.0/10'), { network: 0x6440_0000, prefixLength: 10 });
    assert.equal(formatCidr(parseCidr('0.0.0.0/0')), '0.0.0.0/0');
    assert.equal(formatCidr(parseCidr('1.2.3.4/32')), '1.2.3.4/32');
    for (const bad of ['100.64.0.1/24', '100.64.0.0/33', '100.64.0.0/024', '100.64.0.0', '100.64.0.0/', '/24', '100.64.0.0/24/1', '100.64.0.0 /24']) {
      assert.throws(() => parseCidr(bad), { code: 'INVALID_ARGUMENT' }, bad);
    }
  });

  it('a site subnet is a /16../29 inside 100.64.0.0/10 only', () => {
    assert.equal(formatCidr(parseSiteSubnet('100.64.0.0/16')), '100.64.0.0/16');
    assert.equal(formatCidr(parseSiteSubnet('100.127.255.248/29')), '100.127.255.248/29');
    for (const bad of ['100.64.0.0/15', '100.64.0.0/30', '10.0.0.0/24', '192.168.1.0/24', '100.128.0.0/24', '100.63.255.0/24', '192.0.2.0/24']) {
      assert.throws(() => parseSiteSubnet(bad), { code: 'INVALID_ARGUMENT' }, bad);
    }
  });

  it('containment and overlap', () => {
    const wide = parseCidr('100.64.0.0/16');
    const inside = parseCidr('100.64.7.0/24');
    const beside = parseCidr('100.65.0.0/24');
    assert.ok(cidrContains(wide, inside));
    assert.ok(!cidrContains(inside, wide));
    assert.ok(!cidrContains(wide, beside));
    assert.ok(cidrsOverlap(wide, inside) && cidrsOverlap(inside, wide));
    assert.ok(!cidrsOverlap(wide, beside));
    assert.ok(!cidrsOverlap(parseCidr('100.64.0.0/29'), parseCidr('100.64.0.8/29')), 'adjacent blocks do not overlap');
    assert.ok(addressInCidr(inside, '100.64.7.255'));
    assert.ok(!addressInCidr(inside, '100.64.8.0'));
  });

  it('usable addresses skip the network and broadcast addresses, nothing else', () => {
    const c = parseCidr('100.64.0.0/29');
    assert.equal(usableAddressCount(c), 6);
    assert.deepEqual(Array.from({ length: 7 }, (_, i) => nthUsableAddress(c, i)),
      ['100.64.0.1', '100.64.0.2', '100.64.0.3', '100.64.0.4', '100.64.0.5', '100.64.0.6', null]);
    assert.equal(nthUsableAddress(c, -1), null);
    assert.equal(nthUsableAddress(c, 1.5), null);
    assert.equal(usableIndexOf(c, '100.64.0.1'), 0);
    assert.equal(usableIndexOf(c, '100.64.0.0'), null);
    assert.equal(usableIndexOf(c, '100.64.0.7'), null);
    assert.equal(usableIndexOf(c, '100.64.0.9'), null);
  });
});

describe('default site subnets', () => {
  it('are the /24s of 100.64.0.0/10 in order', () => {
    assert.equal(DEFAULT_SUBNET_COUNT, 16_384);
    assert.equal(formatCidr(defaultSiteSubnet(0) ?? parseCidr('0.0.0.0/0')), '100.64.0.0/24');
    assert.equal(formatCidr(defaultSiteSubnet(257) ?? parseCidr('0.0.0.0/0')), '100.65.1.0/24');
    assert.equal(formatCidr(defaultSiteSubnet(DEFAULT_SUBNET_COUNT - 1) ?? parseCidr('0.0.0.0/0')), '100.127.255.0/24');
    assert.equal(defaultSiteSubnet(DEFAULT_SUBNET_COUNT), null);
    assert.equal(defaultSiteSubnet(-1), null);
  });

  it('the lowest free one overlaps none taken, whatever their size', () => {
    assert.equal(formatCidr(lowestFreeDefaultSubnet([]) ?? parseCidr('0.0.0.0/0')), '100.64.0.0/24');
    const taken = ['100.64.0.0/24', '100.64.1.8/29', '100.64.2.0/23'].map(parseCidr);
    assert.equal(formatCidr(lowestFreeDefaultSubnet(taken) ?? parseCidr('0.0.0.0/0')), '100.64.4.0/24');
    assert.equal(formatCidr(lowestFreeDefaultSubnet([parseCidr('100.64.0.0/16')]) ?? parseCidr('0.0.0.0/0')), '100.65.0.0/24');
    assert.equal(formatCidr(lowestFreeDefaultSubnet([parseCidr('10.0.0.0/8')]) ?? parseCidr('0.0.0.0/0')), '100.64.0.0/24', 'a block outside the space takes nothing of it');
    assert.equal(lowestFreeDefaultSubnet([parseCidr('100.64.0.0/10')]), null);
    assert.equal(lowestFreeDefaultSubnet([parseCidr('0.0.0.0/0')]), null);
  });
});
