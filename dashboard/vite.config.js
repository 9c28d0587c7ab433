import { defineConfig } from "vite";

// nginx serves the built files under /dashboard/ (nginx/impetus-server.conf).
export default defineConfig({
  base: "/dashboard/",
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 200 },
  server: { proxy: { "/v1": "http://127.0.0.1:8080" } },
});
