// The AI SDK's own chat client (the `Chat` logic behind useChat, with its DefaultChatTransport)
// against a live isochat, for tests/integration/test_adapter_ai_sdk.py. One JSON argument says
// what to do; every line printed is a JSON object:
//   {"event": "response", "method", "status", "protocol"}  each HTTP answer, as it arrives
//   {"event": "dropped", "messages"}                      the connection dropped mid-answer
//   {"event": "done", "messages", "status", "error"}      what the user sees at the end
//
// Scenarios:
//   send      each of `texts` sent in turn (the chat may start with `initialMessages`)
//   approve   `texts[0]` sent; each approval the answer asks for answered with `answer`
//             ({approved, reason}); the Chat then sends the answers by itself
//             (sendAutomaticallyWhen), as useChat does; with `oneByOne`, each answer but the
//             last is sent at once (sendMessage()), printing {"event": "answered", "messages"}
//   drop      `texts[0]` sent, and the connection dropped (stop()) once some text has come;
//             with `resume`, the stream then resumed as useChat({resume: true}) does on mount
//   resume    the chat's stream resumed, nothing sent
import {
  AbstractChat,
  DefaultChatTransport,
  lastAssistantMessageIsCompleteWithApprovalResponses,
} from 'ai';

const input = JSON.parse(process.argv[2]);
const say = value => process.stdout.write(JSON.stringify(value) + '\n');

// A Chat's state without a UI framework: what @ai-sdk/react keeps in React state.
class PlainState {
  constructor(messages) {
    this.status = 'ready';
    this.error = undefined;
    this.messages = messages;
    this.onChange = () => {};
  }
  pushMessage = message => {
    this.messages = this.messages.concat(message);
    this.onChange();
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
    this.onChange();
  };
  replaceMessage = (index, message) => {
    this.messages = [
      ...this.messages.slice(0, index),
      this.snapshot(message),
      ...this.messages.slice(index + 1),
    ];
    this.onChange();
  };
  snapshot = value => structuredClone(value);
}

class Chat extends AbstractChat {
  constructor({ messages = [], ...init }) {
    const state = new PlainState(messages);
    super({ ...init, state });
    this.plain = state;
  }
}

// How many requests have ended (onFinish), for a scenario that waits for one the Chat makes by
// itself.
let finishCount = 0;
const finishWaiters = [];
const finishesReach = async count => {
  while (finishCount < count) await new Promise(resolve => finishWaiters.push(resolve));
};

const chat = new Chat({
  id: input.chatId,
  messages: input.initialMessages ?? [],
  transport: new DefaultChatTransport({
    api: `${input.api}/api/chat`,
    headers: { Authorization: `Bearer ${input.token}` },
    body: input.body,
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      say({
        event: 'response',
        method: init?.method ?? 'GET',
        status: response.status,
        protocol: response.headers.get('x-vercel-ai-ui-message-stream'),
      });
      return response;
    },
  }),
  sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithApprovalResponses,
  onFinish: () => {
    finishCount += 1;
    for (const wake of finishWaiters.splice(0)) wake();
  },
});

const done = () =>
  say({
    event: 'done',
    messages: chat.messages,
    status: chat.status,
    error: chat.error ? { message: chat.error.message, statusCode: chat.error.statusCode } : null,
  });

const hasText = message =>
  message?.role === 'assistant' && message.parts.some(p => p.type === 'text' && p.text);

async function main() {
  if (input.scenario === 'send') {
    for (const text of input.texts) {
      await chat.sendMessage({ text });
    }
  } else if (input.scenario === 'approve') {
    await chat.sendMessage({ text: input.texts[0] });
    const asked = chat.lastMessage.parts.filter(p => p.state === 'approval-requested');
    say({ event: 'asked', messages: chat.messages });
    let requests = 1;
    for (const [index, part] of asked.entries()) {
      await chat.addToolApprovalResponse({ id: part.approval.id, ...input.answer });
      if (input.oneByOne && index < asked.length - 1) {
        // Sent at once, while other approvals of the message still wait.
        await chat.sendMessage();
        requests += 1;
        say({ event: 'answered', messages: chat.messages });
      }
    }
    // The answers' own request, which the Chat sends once every approval is answered.
    if (asked.length > 0) await finishesReach(requests + 1);
  } else if (input.scenario === 'drop') {
    chat.plain.onChange = () => {
      if (hasText(chat.lastMessage)) {
        chat.plain.onChange = () => {};
        setImmediate(() => chat.stop());
      }
    };
    await chat.sendMessage({ text: input.texts[0] });
    say({ event: 'dropped', messages: chat.messages });
    if (input.resume) await chat.resumeStream();
  } else if (input.scenario === 'resume') {
    await chat.resumeStream();
  }
  done();
}

await main();
