import { defineConfig } from "vite";

// nginx serves the built files under /dashboard/ (service/impetus/share/nginx/impetus-server.conf).
// They are built into the package (service/impetus/share/dashboard), so a wheel carries them.
export default defineConfig({
  base: "/dashboard/",
  build: { outDir: "../service/impetus/share/dashboard", emptyOutDir: true, chunkSizeWarningLimit: 200 },
  server: { proxy: { "/v1": "http://127.0.0.1:8080" } },
});
