// Validates Prometheus-operator objects (PodMonitor, PrometheusRule) against
// @kubernetes-models/prometheus-operator, which `make setup` installs into .cache/npm:
//
//   node tests/deploy/validate_crds.mjs < docs.json
//
// Input: a JSON array of objects. Output: a JSON array, one entry per object, in order:
// {"ok": true} or {"ok": false, "errors": ["..."]}. Exit code 0 when every object is valid, 1 when
// one is not, 2 on bad input or a broken installation. An unknown apiVersion/kind is an error.
//
// Two checks per object:
// 1. the package's ajv validators (`new PodMonitor(obj).validate()`): types, enums, patterns,
//    required fields. They are generated from the operator's Go types and allow unknown fields.
// 2. strictness: each object becomes a typed object literal in a TypeScript file checked with
//    the pinned `typescript` against the package's declarations, so an unknown field anywhere
//    (TS2353, excess property) fails, like `kubectl apply --validate=strict` would on the server.
import { createRequire } from "node:module";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";

// The packages live in the npm prefix, not beside this script: resolve them from there.
const prefix = resolve(process.env.SPOTGUARD_NPM_PREFIX ?? ".cache/npm");
const require = createRequire(resolve(prefix, "package.json"));
const MODELS = "@kubernetes-models/prometheus-operator";
let modelsDir, ts;
try {
  modelsDir = resolve(require.resolve(`${MODELS}/package.json`), "..");
  ts = require("typescript");
} catch (error) {
  console.error(`validate_crds: ${error.message} (run make setup)`);
  process.exit(2);
}

// apiVersion/kind -> [module path inside the package, TypeScript interface name]
const KINDS = {
  "monitoring.coreos.com/v1/PodMonitor": ["monitoring.coreos.com/v1/PodMonitor", "IPodMonitor"],
  "monitoring.coreos.com/v1/PrometheusRule": [
    "monitoring.coreos.com/v1/PrometheusRule",
    "IPrometheusRule",
  ],
  "monitoring.coreos.com/v1/ServiceMonitor": [
    "monitoring.coreos.com/v1/ServiceMonitor",
    "IServiceMonitor",
  ],
};

const kindOf = (doc) => KINDS[`${doc?.apiVersion}/${doc?.kind}`];

async function ajvErrors(doc) {
  const known = kindOf(doc);
  if (!known) {
    return [`no schema for ${doc?.apiVersion}/${doc?.kind}`];
  }
  const module = await import(resolve(modelsDir, `${known[0]}.js`));
  try {
    new module[doc.kind](doc).validate();
    return [];
  } catch (error) {
    return [String(error?.message ?? error)];
  }
}

// One line per object (`export const dN: Type = {...};`), so a diagnostic's line names its object.
function typeErrors(docs) {
  const errors = docs.map(() => []);
  const typed = docs.map((doc, i) => [i, kindOf(doc)]).filter(([, known]) => known);
  if (typed.length === 0) {
    return errors;
  }
  const imports = [...new Set(typed.map(([, known]) => known))].map(
    ([path, name]) => `import type { ${name} } from "${MODELS}/${path}";`,
  );
  const lines = [...imports];
  const lineToDoc = new Map();
  for (const [i, [, name]] of typed) {
    lineToDoc.set(lines.length, i);
    lines.push(`export const d${i}: ${name} = ${JSON.stringify(docs[i])};`);
  }
  // Inside the prefix, so that Node module resolution finds its node_modules.
  const dir = mkdtempSync(join(prefix, ".validate-crds-"));
  try {
    const file = join(dir, "check.ts");
    writeFileSync(file, lines.join("\n") + "\n");
    const program = ts.createProgram([file], {
      noEmit: true,
      strict: true,
      skipLibCheck: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      types: [],
    });
    for (const d of ts.getPreEmitDiagnostics(program)) {
      const text = ts.flattenDiagnosticMessageText(d.messageText, " ");
      const line = d.file?.fileName === file ? d.file.getLineAndCharacterOfPosition(d.start).line : -1;
      if (!lineToDoc.has(line)) {
        // An import that does not resolve means a broken installation, not a bad object.
        throw new Error(`TS${d.code}: ${text}`);
      }
      errors[lineToDoc.get(line)].push(`TS${d.code}: ${text}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return errors;
}

let docs;
try {
  docs = JSON.parse(readFileSync(0, "utf8"));
} catch (error) {
  console.error(`validate_crds: stdin is not JSON: ${error.message}`);
  process.exit(2);
}
if (!Array.isArray(docs)) {
  console.error("validate_crds: expected a JSON array of objects");
  process.exit(2);
}
let strict;
try {
  strict = typeErrors(docs);
} catch (error) {
  console.error(`validate_crds: ${error.message}`);
  process.exit(2);
}
const results = [];
for (const [i, doc] of docs.entries()) {
  const errors = [...(await ajvErrors(doc)), ...strict[i]];
  results.push(errors.length ? { ok: false, errors } : { ok: true });
}
process.stdout.write(JSON.stringify(results) + "\n");
process.exit(results.every((r) => r.ok) ? 0 : 1);
