// llamacpp-check.mjs - load the GGUF files AutoPrune wrote with llama.cpp (node-llama-cpp 3.21.1, prebuilt CPU binaries)
// and compare llama.cpp's outputs with AutoPrune's (ours.json from `AutoPrune.Benchmarks gguf-export`):
//   * token ids of every prompt (llama.cpp's tokenizer on the file's vocabulary vs ours) - equal;
//   * next-token log-probabilities at the prompt's end: llama.cpp gives probabilities (softmax of its logits), so
//     log p_llama - log_softmax(ours) is compared over the tokens with p >= 1e-4; a logit difference e moves a log-softmax
//     by at most 2·max|e|, so the README's logit tolerances (0.02 f16, 0.2 quantized) become 0.04 / 0.4;
//   * greedy tokens (the next one and up to 3 more, until </s>, where node-llama-cpp stops): equal wherever our top-2
//     margin exceeds twice the logit tolerance.
// usage: node llamacpp-check.mjs OURS.json        (run from a folder whose node_modules has node-llama-cpp)
import {getLlama, LlamaLogLevel} from "node-llama-cpp";
import fs from "node:fs";

const ours = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error, maxThreads: 1});
const report = {llamaCppRelease: llama.llamaCppRelease, variants: {}};
let failures = 0;
const fail = (msg) => { failures++; console.error("FAIL " + msg); };

for (const [type, v] of Object.entries(ours)) {
    const tol = type === "f16" ? 0.02 : 0.2;
    const model = await llama.loadModel({modelPath: v.file, gpuLayers: 0});
    const context = await model.createContext({contextSize: 1024, batchSize: 1024, threads: {ideal: 1, min: 1}, sequences: 1});
    const seq = context.getSequence();
    const bos = model.tokens.bos;
    const rows = [];
    for (const row of v.text) {
        const ids = [bos, ...model.tokenize(row.text)];
        const idsEqual = JSON.stringify(ids) === JSON.stringify(row.ids);
        if (!idsEqual) fail(`${type} '${row.text}': llama.cpp ids ${JSON.stringify(ids)} != ours ${JSON.stringify(row.ids)}`);
        await seq.clearHistory();
        const input = row.ids.map((t, i) => i === row.ids.length - 1 ? [t, {generateNext: {token: true, probabilities: true, options: {temperature: 0}}}] : t);
        const res = await seq.controlledEvaluate(input);
        const next = res[row.ids.length - 1].next;
        // log_softmax of our logits
        const max = Math.max(...row.logits);
        const lse = max + Math.log(row.logits.reduce((s, x) => s + Math.exp(x - max), 0));
        let maxDelta = 0, compared = 0;
        for (const [tok, p] of next.probabilities.entries()) {
            if (p < 1e-4) continue;
            const d = Math.abs(Math.log(p) - (row.logits[tok] - lse));
            maxDelta = Math.max(maxDelta, d);
            compared++;
        }
        if (!(maxDelta <= 2 * tol)) fail(`${type} '${row.text}': max |delta log p| ${maxDelta} > ${2 * tol}`);
        // node-llama-cpp's evaluate() ends at an end-of-generation token (</s>): llama.cpp's greedy stops there
        const eos = model.tokens.eos;
        const greedy = [next.token];
        if (next.token !== eos) {
            const gen = seq.evaluate([next.token], {temperature: 0});
            for (let i = 0; i < 3; i++) {
                const r = await gen.next();
                if (r.done) { greedy.push(eos); break; }
                greedy.push(r.value);
                if (r.value === eos) break;
            }
            await gen.return();
        }
        const mismatches = [];
        for (let i = 0; i < greedy.length; i++) {
            if (greedy[i] === row.greedy[i]) continue;
            mismatches.push({step: i, llama: greedy[i], ours: row.greedy[i], our_margin: row.margins[i]});
            if (row.margins[i] > 2 * tol) fail(`${type} '${row.text}': greedy token ${i} is ${greedy[i]} in llama.cpp, ${row.greedy[i]} here (our margin ${row.margins[i]})`);
            break; // later tokens continue from different prefixes
        }
        rows.push({text: row.text, ids_equal: idsEqual, logprob_max_delta: +maxDelta.toFixed(6), logprobs_compared: compared,
                   top1_prob: +next.probabilities.get(next.token).toFixed(6), greedy_llamacpp: greedy, greedy_ours: row.greedy, mismatches});
    }
    report.variants[type] = {file: v.file, max_logprob_delta: Math.max(...rows.map(r => r.logprob_max_delta)), tolerance: 2 * tol,
                             ids_equal: rows.every(r => r.ids_equal), greedy_equal: rows.every(r => r.mismatches.length === 0), rows};
    await context.dispose();
    await model.dispose();
}
report.failures = failures;
console.log(JSON.stringify(report, null, 1));
await llama.dispose();
process.exit(failures === 0 ? 0 : 1);
