// Builds the web app into ../crates/server/web-dist/, which the server
// embeds (crates/server/build.rs). `npm run build`; scripts/check-dist.sh
// checks the committed copy against a fresh build, so the build must be
// deterministic: content hashes in names, no timestamps, no source maps.

import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  base: "/",
  resolve: {
    alias: {
      // The SDK is imported from its sources, compiled with the app.
      "@pigeon/sdk": here("../sdk/typescript/src/index.ts"),
    },
    // The SDK's own dependency comes from web/node_modules, so a build needs
    // only `npm ci` here.
    dedupe: ["@bufbuild/protobuf"],
  },
  build: {
    outDir: process.env.PIGEON_WEB_OUT ?? here("../crates/server/web-dist"),
    emptyOutDir: true,
    sourcemap: false,
    target: "es2022",
    assetsInlineLimit: 0,
    reportCompressedSize: false,
  },
  server: {
    // `npm run dev` next to a `pigeon serve` on the default HTTP port.
    proxy: { "/ws": { target: "ws://127.0.0.1:7780", ws: true } },
  },
});
