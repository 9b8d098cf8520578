// Parse and validate docs/asyncapi.yaml with the AsyncAPI parser; print diagnostics as JSON.
// The schemas reference each other by $id (https://escalator.dev/schemas/...): a resolver maps
// those to the files in service/escalator/contract/schemas, so nothing is fetched from the network.
// Usage: node asyncapi_check.mjs <document> <schemas dir>   (NODE_PATH: .tools/node_modules)
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.ESCALATOR_TOOLS, "node_modules", "x.js"));
const { Parser, fromFile } = require("@asyncapi/parser");

const [document, schemasDir] = process.argv.slice(2);
const ID_PREFIX = "https://escalator.dev/schemas/";
const parser = new Parser({
  __unstable: {
    resolver: {
      resolvers: [
        {
          schema: "https",
          order: 1,
          canRead: (uri) => uri.toString().startsWith(ID_PREFIX),
          read: (uri) =>
            readFile(path.join(schemasDir, uri.toString().slice(ID_PREFIX.length)), "utf8"),
        },
      ],
    },
  },
});
const { document: parsed, diagnostics } = await fromFile(parser, document).parse();
const out = {
  valid: parsed !== undefined,
  diagnostics: diagnostics.map((d) => ({
    severity: d.severity,
    code: d.code,
    message: d.message,
    path: d.path.join("."),
  })),
};
if (parsed) {
  out.channels = parsed.channels().all().map((c) => c.address());
  out.operations = parsed.operations().all().map((o) => `${o.action()} ${o.channels().all()[0].address()}`);
  out.messages = parsed.components().messages().all().map((m) => m.name());
  out.requestRequired = parsed.components().messages().all()
    .find((m) => m.name() === "request").payload().required();
}
console.log(JSON.stringify(out));
