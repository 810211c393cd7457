// openai-client.mjs - the official OpenAI client (npm "openai") against a running
// glm-server: completions and chat completions, whole and streamed (greedy: the stream
// adds up to the whole answer), stop strings, usage, the model list and the errors the
// client raises. env: GLM_SERVER_URL (http://127.0.0.1:PORT/v1), GLM_SERVER_MODEL.
// Prints "ok <name>" per check; exits 1 on the first failure.
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: process.env.GLM_SERVER_URL, apiKey: 'unused', maxRetries: 0, timeout: 30000 });
const model = process.env.GLM_SERVER_MODEL;

function check(cond, what) {
  if (!cond) { console.error(`FAIL ${what}`); process.exit(1); }
  console.log(`ok ${what}`);
}

const models = await client.models.list();
check(models.data.length === 1 && models.data[0].id === model, `models.list gives ${model}`);

const base = { model, temperature: 0, max_tokens: 12, ignore_eos: true };
const c = await client.completions.create({ ...base, prompt: 'Once upon a time' });
check(typeof c.choices[0].text === 'string' && c.choices[0].text.length > 0, 'completion text');
check(c.choices[0].finish_reason === 'length', 'completion finish_reason length');
check(c.usage.completion_tokens === 12 && c.usage.prompt_tokens > 0 &&
      c.usage.total_tokens === c.usage.prompt_tokens + 12, 'completion usage');

let streamed = '', last = null, usage = null;
const cs = await client.completions.create({ ...base, prompt: 'Once upon a time', stream: true,
                                             stream_options: { include_usage: true } });
for await (const chunk of cs) {
  if (chunk.usage) usage = chunk.usage;
  if (chunk.choices.length) { streamed += chunk.choices[0].text; last = chunk.choices[0].finish_reason ?? last; }
}
check(streamed === c.choices[0].text, 'streamed completion equals the whole one');
check(last === 'length' && usage && usage.completion_tokens === 12, 'streamed completion finish_reason and usage');

const messages = [{ role: 'system', content: 'You are brief.' }, { role: 'user', content: 'Say hello.' }];
const chat = await client.chat.completions.create({ ...base, messages });
const msg = chat.choices[0].message;
check(msg.role === 'assistant' && typeof msg.content === 'string', 'chat message');
check(chat.object === 'chat.completion' && chat.usage.completion_tokens === 12, 'chat usage');

let content = '', reasoning = '', role = null, fin = null;
const chs = await client.chat.completions.create({ ...base, messages, stream: true });
for await (const chunk of chs) {
  const d = chunk.choices[0].delta;
  role = role ?? d.role;
  content += d.content ?? '';
  reasoning += d.reasoning_content ?? '';
  fin = chunk.choices[0].finish_reason ?? fin;
}
check(role === 'assistant' && fin === 'length', 'streamed chat role and finish_reason');
check(content === msg.content && reasoning === (msg.reasoning_content ?? ''), 'streamed chat equals the whole answer');

// a stop string taken from the middle of the greedy text ends the text before it
const text = c.choices[0].text;
const stop = text.slice(Math.floor(text.length / 2), Math.floor(text.length / 2) + 3);
const cut = await client.completions.create({ ...base, prompt: 'Once upon a time', stop: [stop] });
check(cut.choices[0].finish_reason === 'stop' && cut.choices[0].text === text.slice(0, text.indexOf(stop)),
      `stop string ${JSON.stringify(stop)}`);

// seeded sampling repeats itself
const s1 = await client.completions.create({ model, prompt: 'The sea', max_tokens: 10, temperature: 0.9, top_p: 0.9,
                                             seed: 42, ignore_eos: true });
const s2 = await client.completions.create({ model, prompt: 'The sea', max_tokens: 10, temperature: 0.9, top_p: 0.9,
                                             seed: 42, ignore_eos: true });
check(s1.choices[0].text === s2.choices[0].text, 'the same seed gives the same sample');

try {
  await client.completions.create({ ...base, model: 'no-such-model', prompt: 'x' });
  check(false, 'unknown model is refused');
} catch (e) {
  check(e instanceof OpenAI.NotFoundError && e.code === 'model_not_found', 'unknown model: NotFoundError model_not_found');
}
try {
  await client.completions.create({ ...base, prompt: 'x', max_tokens: 1 << 20 });
  check(false, 'max_tokens past the context is refused');
} catch (e) {
  check(e instanceof OpenAI.BadRequestError && e.param === 'max_tokens', 'max_tokens past the context: BadRequestError');
}
console.log('all ok');
