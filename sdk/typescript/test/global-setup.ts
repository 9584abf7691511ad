//! Vitest global setup: builds the pigeon binary when missing and starts one
//! shared server for the test files; the files that stop or restart a server
//! start their own.

import type { TestProject } from "vitest/node";
import { ensureBinary, TestServer } from "./server.js";

declare module "vitest" {
  export interface ProvidedContext {
    pigeonUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  ensureBinary();
  const server = await TestServer.start();
  project.provide("pigeonUrl", server.wsUrl);
  return async () => {
    await server.dispose();
  };
}
