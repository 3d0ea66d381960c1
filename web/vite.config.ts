// The web UI's build (npm run build:web): web/ → dist/web, served by the center (src/center/web-ui.ts)
// with index.html at / and the hashed bundles under /ui/assets/ (the one prefix the center serves them at).
import { defineConfig } from 'vite';
import preact from '@preact/preset-vite';

export default defineConfig({
  root: import.meta.dirname,
  base: '/ui/',
  plugins: [preact()],
  build: {
    outDir: '../dist/web',
    emptyOutDir: true,
    assetsDir: 'assets',
    // The center serves the build it was installed with: no source maps of the UI to ship or serve.
    sourcemap: false,
    target: 'es2022',
  },
});
