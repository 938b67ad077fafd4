// Rebuilds FedchainAnchor.json from FedchainAnchor.sol with solcjs (no network at run time):
//     cd "$(mktemp -d)" && npm install solc@0.8.28 && node /path/to/fedchain/anchor/contracts/compile.js
// Writes FedchainAnchor.json next to this file; a rebuild with the same solc gives the same bytes.
const solc = require(require.resolve("solc", { paths: [process.cwd()] }));
const fs = require("fs");
const path = require("path");
const source = fs.readFileSync(path.join(__dirname, "FedchainAnchor.sol"), "utf8");
const input = {
  language: "Solidity",
  sources: { "FedchainAnchor.sol": { content: source } },
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
const out = JSON.parse(solc.compile(JSON.stringify(input)));
for (const e of out.errors || []) { console.error(e.formattedMessage); if (e.severity === "error") process.exit(1); }
const c = out.contracts["FedchainAnchor.sol"].FedchainAnchor;
const artifact = {
  contractName: "FedchainAnchor", compiler: "solc " + solc.version(), evmVersion: "cancun",
  optimizerRuns: 200, abi: c.abi, bytecode: "0x" + c.evm.bytecode.object,
  deployedBytecode: "0x" + c.evm.deployedBytecode.object,
};
fs.writeFileSync(path.join(__dirname, "FedchainAnchor.json"), JSON.stringify(artifact, null, 1) + "\n");
