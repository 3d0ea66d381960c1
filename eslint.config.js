// Lint: typescript-eslint's type-aware recommended rules; `any` may not leak.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

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
    // node:test registers describe/it calls; the runner awaits them, not the file.
    files: ['test/**/*.ts'],
    rules: { '@typescript-eslint/no-floating-promises': 'off' },
  },
  { files: ['eslint.config.js'], ...tseslint.configs.disableTypeChecked },
);
