/**
 * Every row of a keyset-paged store list, in order: pages of MAX_LIST_LIMIT, each after the last key of
 * the one before, until a short page. The one paging loop of the center's code over its store.
 */
import { MAX_LIST_LIMIT } from './model.js';

export async function everyPage<T, K>(page: (after: K | undefined, limit: number) => Promise<readonly T[]>, key: (row: T) => K): Promise<T[]> {
  const all: T[] = [];
  for (let after: K | undefined; ;) {
    const rows = await page(after, MAX_LIST_LIMIT);
    all.push(...rows);
    const last = rows[rows.length - 1];
    if (rows.length < MAX_LIST_LIMIT || last === undefined) return all;
    after = key(last);
  }
}
