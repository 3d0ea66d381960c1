// Lint: typescript-eslint's type-aware recommended rules; `any` may not leak; imports follow the
// layer direction of ARCHITECTURE.md §5.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import importX, { createNodeResolver } from 'eslint-plugin-import-x';

// ARCHITECTURE.md §5: `lib ← vmm, storage, dataplane ← migration, nfc ← api ← host ← center ← cli, web`.
// Bottom first; a layer may import its own and the layers below it, never one above. Layers that do not
// exist yet are listed so that they are held to the direction the day they appear.
const LAYERS = [
  ['src/lib'],
  ['src/vmm', 'src/storage', 'src/dataplane'],
  ['src/migration', 'src/nfc'],
  ['src/api'],
  ['src/host'],
  ['src/center'],
  ['src/cli', 'web'],
];
const ALL_LAYER_DIRS = LAYERS.flat();

const layerZones = LAYERS.flatMap((layer, i) => {
  const above = LAYERS.slice(i + 1).flat();
  return above.length === 0 ? [] : layer.map((dir) => ({
    target: `./${dir}`,
    from: above.map((d) => `./${d}`),
    message: `${dir} may not import a layer above it (ARCHITECTURE.md §5: lib ← vmm, storage, dataplane ← migration, nfc ← api ← host ← center ← cli, web).`,
  }));
});

const importZones = [
  ...layerZones,
  {
    target: './src/migration/protocol',
    from: './src',
    except: ['./lib', './migration/protocol', './types'],
    message: 'src/migration/protocol is the wire format only: it imports nothing but src/lib (ARCHITECTURE.md §5).',
  },
  {
    target: './src/nfc/protocol',
    from: './src',
    except: ['./lib', './nfc/protocol', './nfc/plan.ts', './types'],
    message: 'src/nfc/protocol is the wire format only: it imports nothing but src/lib and src/nfc/plan.ts (ARCHITECTURE.md §5).',
  },
  {
    // vmm never imports migration: covered by the layers; dataplane and vmm share a layer, so this one is explicit.
    target: './src/dataplane',
    from: './src/vmm',
    message: 'src/dataplane never imports src/vmm (ARCHITECTURE.md §5).',
  },
  {
    // test/ and bench/ may import anything; nothing shipped imports them.
    target: ALL_LAYER_DIRS.map((d) => `./${d}`),
    from: ['./test', './bench'],
    message: 'Shipped code does not import tests or benchmarks.',
  },
];

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'guests/src/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      // vCPU states and binaryen expression ids arrive as plain numbers from Atomics and binaryen;
      // comparing them with their enum constants is the point.
      '@typescript-eslint/no-unsafe-enum-comparison': 'off',
    },
  },
  {
    files: ['**/*.ts', '**/*.tsx'],
    plugins: { 'import-x': importX },
    settings: {
      // Specifiers are NodeNext style: `./vm.js` names the file `./vm.ts`. The default resolver would
      // not find it, and no-restricted-paths silently skips what it cannot resolve.
      'import-x/resolver-next': [
        createNodeResolver({
          extensions: ['.ts', '.tsx', '.d.ts', '.js', '.mjs', '.cjs', '.json', '.node'],
          extensionAlias: { '.js': ['.ts', '.tsx', '.d.ts', '.js'], '.mjs': ['.mts', '.mjs'], '.cjs': ['.cts', '.cjs'] },
          conditionNames: ['types', 'import', 'require', 'default'],
        }),
      ],
    },
    rules: {
      'import-x/no-restricted-paths': ['error', { basePath: import.meta.dirname, zones: importZones }],
      // A relative import that does not resolve would escape the rule above: make it an error too.
      'import-x/no-unresolved': 'error',
    },
  },
  {
    // node:test registers describe/it calls; the runner awaits them, not the file.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-floating-promises': 'off' },
  },
  { files: ['eslint.config.js'], ...tseslint.configs.disableTypeChecked },
);
