// poller's Node.js runtime interface client: talks to the Lambda Runtime API that poller serves
// to this environment (AWS_LAMBDA_RUNTIME_API), loads the handler named by _HANDLER
// ("path/to/file.export") from LAMBDA_TASK_ROOT as a CommonJS or an ES module, and calls it as
// Lambda's Node.js runtime does: async handlers, callback handlers, Lambda's context object,
// console lines with the request id, and Lambda's error documents. No native build and no
// dependency beyond Node itself (18 or later).

import { existsSync } from "node:fs";
import http from "node:http";
import path from "node:path";
import { pathToFileURL } from "node:url";
import util from "node:util";

const BASE = "/2018-06-01/runtime";
const env = process.env;
const [apiHost, apiPort] = (env.AWS_LAMBDA_RUNTIME_API || "").split(":");
// One connection, kept alive: the client asks for one invocation at a time.
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let currentRequestId;

class Fault extends Error {
  constructor(type, message) {
    super(message);
    this.name = type;
  }
}

function call(method, urlPath, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const options = { host: apiHost, port: apiPort, method, path: urlPath, agent, headers: { ...headers } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.headers["Content-Length"] = Buffer.byteLength(body);
    }
    const request = http.request(options, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () =>
        resolve({ status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks) }),
      );
      response.on("error", reject);
    });
    request.on("error", reject);
    if (body !== undefined) request.write(body);
    request.end();
  });
}

// Lambda's text log format: time, request id, level, message; a message's own line breaks become
// carriage returns so that it stays one log event.
function patchConsole() {
  const levels = { log: "INFO", info: "INFO", warn: "WARN", error: "ERROR", debug: "DEBUG", trace: "TRACE" };
  for (const [method, level] of Object.entries(levels)) {
    console[method] = (...args) => {
      const message = util.format(...args).replace(/\n/g, "\r");
      process.stdout.write(`${new Date().toISOString()}\t${currentRequestId}\t${level}\t${message}\n`);
    };
  }
}

function errorDocument(error) {
  if (error instanceof Error) {
    return {
      errorType: error.name || "Error",
      errorMessage: error.message,
      trace: (error.stack || "").split("\n"),
    };
  }
  return {
    errorType: typeof error,
    errorMessage: typeof error === "string" ? error : util.inspect(error),
    trace: [],
  };
}

async function loadHandler(taskRoot, handler) {
  const slash = handler.lastIndexOf("/");
  const name = handler.slice(slash + 1);
  const dot = name.indexOf(".");
  if (dot < 1) throw new Fault("Runtime.MalformedHandlerName", `Bad handler ${handler}`);
  const file = handler.slice(0, slash + 1) + name.slice(0, dot);
  const exportPath = name.slice(dot + 1).split(".");
  const base = path.resolve(taskRoot, file);
  const found = [".js", ".mjs", ".cjs"].map((extension) => base + extension).find((candidate) => existsSync(candidate));
  if (found === undefined) {
    throw new Fault("Runtime.ImportModuleError", `Error: Cannot find module '${file}'`);
  }
  let module;
  try {
    module = await import(pathToFileURL(found).href);
  } catch (error) {
    if (error instanceof SyntaxError) throw new Fault("Runtime.UserCodeSyntaxError", `${error.name}: ${error.message}`);
    throw error;
  }
  const lookup = (root) => exportPath.reduce((value, key) => (value == null ? undefined : value[key]), root);
  // A CommonJS module's exports are its default export; named ones only where Node can see them.
  const target = lookup(module) ?? lookup(module.default);
  if (typeof target !== "function") {
    throw new Fault("Runtime.HandlerNotFound", `${file}.${exportPath.join(".")} is undefined or not exported`);
  }
  return target;
}

function parseHeader(value) {
  if (!value) return undefined;
  try {
    return JSON.parse(value);
  } catch {
    return undefined;
  }
}

function makeContext(headers) {
  const deadline = Number(headers["lambda-runtime-deadline-ms"]);
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName: env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: env.AWS_LAMBDA_FUNCTION_VERSION,
    invokedFunctionArn: headers["lambda-runtime-invoked-function-arn"],
    memoryLimitInMB: env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    awsRequestId: headers["lambda-runtime-aws-request-id"],
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: env.AWS_LAMBDA_LOG_STREAM_NAME,
    identity: parseHeader(headers["lambda-runtime-cognito-identity"]),
    clientContext: parseHeader(headers["lambda-runtime-client-context"]),
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
  };
}

// An async handler's promise, or a callback handler's callback (context.done/succeed/fail too).
function run(handler, event, context) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const callback = (error, result) => {
      if (settled) return;
      settled = true;
      if (error !== undefined && error !== null) reject(error);
      else resolve(result);
    };
    context.done = callback;
    context.succeed = (result) => callback(null, result);
    context.fail = (error) => callback(error ?? new Error("handled"));
    let returned;
    try {
      returned = handler(event, context, callback);
    } catch (error) {
      callback(error);
      return;
    }
    if (returned !== null && typeof returned === "object" && typeof returned.then === "function") {
      returned.then((result) => callback(null, result), (error) => callback(error ?? new Error("rejected")));
    } else if (handler.length < 3) {
      callback(null, returned);
    }
  });
}

async function postError(requestId, error) {
  const document = errorDocument(error);
  console.error(`Invoke Error \t${JSON.stringify(document)}`);
  await call("POST", `${BASE}/invocation/${requestId}/error`, JSON.stringify(document), {
    "Lambda-Runtime-Function-Error-Type": document.errorType,
  });
}

async function main() {
  patchConsole();
  let handler;
  try {
    handler = await loadHandler(env.LAMBDA_TASK_ROOT || process.cwd(), env._HANDLER || "");
  } catch (error) {
    const document = errorDocument(error);
    console.error(`Init Error \t${JSON.stringify(document)}`);
    await call("POST", `${BASE}/init/error`, JSON.stringify(document), {
      "Lambda-Runtime-Function-Error-Type": document.errorType,
    });
    process.exit(1);
  }
  const fatal = (type) => async (error) => {
    const fault = error instanceof Error ? error : new Fault(type, util.inspect(error));
    if (currentRequestId !== undefined) await postError(currentRequestId, fault).catch(() => {});
    process.exit(128);
  };
  process.on("uncaughtException", fatal("Runtime.UncaughtException"));
  process.on("unhandledRejection", fatal("Runtime.UnhandledPromiseRejection"));
  for (;;) {
    const next = await call("GET", `${BASE}/invocation/next`);
    if (next.status !== 200) throw new Error(`Runtime API /next answered ${next.status}: ${next.body}`);
    const requestId = next.headers["lambda-runtime-aws-request-id"];
    const traceId = next.headers["lambda-runtime-trace-id"];
    if (traceId) env._X_AMZN_TRACE_ID = traceId;
    else delete env._X_AMZN_TRACE_ID;
    currentRequestId = requestId;
    let body;
    try {
      const event = JSON.parse(next.body.toString("utf8"));
      const result = await run(handler, event, makeContext(next.headers));
      body = JSON.stringify(result === undefined ? null : result);
    } catch (error) {
      await postError(requestId, error);
      continue;
    }
    await call("POST", `${BASE}/invocation/${requestId}/response`, body ?? "null");
  }
}

// Only the Runtime API going away (poller stopped) or refusing a call ends the loop.
main().catch((error) => {
  process.stderr.write(`poller node runtime: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
