"""Reading the model's stream: the CPU a streamed token costs the process that reads it, with C
answers streaming at once, through isochat's model client against the ``openai`` client used
the plain way, in the same process and run.

The model is ``streaming_overhead.py``'s fake server (a process of its own): ``--tokens``
tokens per answer, one every ``--pace-ms``, so that each token arrives on its own as a model's
do. The readers, one after the other, each reading C answers at once (started spread over
one pace):

- ``isochat``: ``OpenAILLM.reply(..., on_text=...)``, as a run reads its answer;
- ``openai``: ``AsyncOpenAI().chat.completions.create(stream=True)`` on the client's default
  transport, iterating its typed chunks: how the SDK is usually used, and what isochat used
  before it read the events itself on the aiohttp transport.

CPU is this process's own (user + system) while the answers stream, per token. The last line
is machine-readable; ``ratio`` is isochat's CPU per token over openai's (lower is better).

    .venv/bin/python bench/model_stream.py [--concurrency 200] [--tokens 500] [--pace-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import openai
from ws_load import HOST, free_port, raise_fd_limit

from src.services.llm.base import ChatMessage
from src.services.llm.openai import OpenAILLM

START_TIMEOUT_S = 10.0
TIMEOUT_S = 300.0
MESSAGES = [ChatMessage("user", "tell me a story")]


Reader = tuple[Callable[[], Awaitable[int]], Callable[[], Awaitable[None]]]  # read, close


async def isochat_reader(base_url: str, connections: int) -> Reader:
    llm = OpenAILLM(
        base_url=base_url, api_key=None, model="fake", timeout_s=TIMEOUT_S, max_retries=0,
        max_connections=connections,
    )  # fmt: skip

    async def read() -> int:
        tokens = 0

        async def count(_piece: str) -> None:
            nonlocal tokens
            tokens += 1

        await llm.reply(MESSAGES, on_text=count)
        return tokens

    return read, llm.aclose


async def openai_reader(base_url: str, connections: int) -> Reader:
    client = openai.AsyncOpenAI(
        base_url=base_url + "/v1", api_key="no-key", timeout=TIMEOUT_S, max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(
            limits=httpx2.Limits(
                max_connections=connections, max_keepalive_connections=connections
            )
        ),
    )  # fmt: skip

    async def read() -> int:
        tokens = 0
        stream = await client.chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "tell me a story"}], stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
        return tokens

    return read, client.close


async def measure(
    name: str, make: Callable[[str, int], Awaitable[Reader]],
    *, base_url: str, concurrency: int, pace_s: float,
) -> float:  # fmt: skip
    read, close = await make(base_url, concurrency)
    try:
        await read()  # warm: connect, import, first answer

        async def one(index: int) -> int:
            await asyncio.sleep(index * pace_s / concurrency)
            return await read()

        cpu, wall = time.process_time(), time.monotonic()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(concurrency))))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    finally:
        await close()
    per_token_us = cpu / tokens * 1e6
    print(
        f"{name:8} C={concurrency}: {tokens} tokens in {wall:.1f} s, cpu {cpu:.2f} s "
        f"({cpu / wall:.0%} of a core), {per_token_us:.0f} µs per token",
        flush=True,
    )
    return per_token_us


async def wait_until_listening(port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


async def bench(args: argparse.Namespace, port: int) -> int:
    await wait_until_listening(port)
    base_url = f"http://{HOST}:{port}"
    print(
        f"model_stream: {args.concurrency} answers at once, {args.tokens} tokens every "
        f"{args.pace_ms:g} ms each",
        flush=True,
    )
    pace_s = args.pace_ms / 1000
    ours = await measure(
        "isochat", isochat_reader, base_url=base_url, concurrency=args.concurrency, pace_s=pace_s
    )
    theirs = await measure(
        "openai", openai_reader, base_url=base_url, concurrency=args.concurrency, pace_s=pace_s
    )
    print(
        f"model_stream: c={args.concurrency} isochat_us_per_token {ours:.0f} "
        f"openai_us_per_token {theirs:.0f} ratio {ours / theirs:.2f}"
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--pace-ms", type=float, default=20.0)
    args = parser.parse_args()
    if args.concurrency < 1 or args.tokens < 1 or args.pace_ms < 0:
        parser.error("--concurrency and --tokens must be at least 1, --pace-ms at least 0")
    logging.basicConfig(level=logging.WARNING)
    raise_fd_limit()
    port = free_port()
    model = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("streaming_overhead.py")),
         "--serve-model", str(port), "--pace-ms", str(args.pace_ms), "--tokens", str(args.tokens)],
    )  # fmt: skip
    try:
        return asyncio.run(bench(args, port))
    finally:
        model.kill()
        model.wait()


if __name__ == "__main__":
    sys.exit(main())
