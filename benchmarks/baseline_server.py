"""The baseline a user would write: a gRPC Generation server that runs `model.generate`
one request at a time and streams each token's text as soon as it is decoded. Used by
`llm_serving.py` only.

    python benchmarks/baseline_server.py MODEL_DIR PORT_FILE [--streamer word]

It serves galactic.v1.Generation/Generate (text-only chunks), binds port 0 and writes the
port it got to PORT_FILE once it is ready.

Why not `TextIteratorStreamer` (the default until now, `--streamer word` keeps it): it
holds text back until a space or newline, so its first text arrives a word late, one or
more decode steps after the first token was sampled. That made the baseline's time to
first token look ~1 decode step worse than `generate()` really is, and hid most of
galacticd's own overhead at one stream.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from galactic.v1 import generation_pb2 as pb  # noqa: E402
from galactic.v1 import generation_pb2_grpc  # noqa: E402


class TokenStreamer(BaseStreamer):
    """Each new token's text as soon as it decodes to whole characters (skip the prompt)."""

    def __init__(self, tok, loop: asyncio.AbstractEventLoop) -> None:
        self.tok, self.loop = tok, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already sent
        self.prompt = True

    def put(self, value) -> None:
        if self.prompt:  # generate() puts the prompt first
            self.prompt = False
            return
        self.ids.extend(value.reshape(-1).tolist())
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.sent and not text.endswith("\ufffd"):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, text[self.sent:])
            self.sent = len(text)

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


class BaselineGeneration(generation_pb2_grpc.GenerationServicer):
    def __init__(self, model_dir: str, streamer: str) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.streamer = streamer
        self.lock = asyncio.Lock()  # one generate() at a time, as a plain server would

    async def Generate(self, request, context):
        n = request.stopping.max_new_tokens or 64
        ids = torch.tensor([self.tok(request.prompt)["input_ids"]])
        async with self.lock:
            if self.streamer == "token":
                async for piece in self._generate_tokens(ids, n, request.stopping.ignore_eos):
                    yield pb.GenerateResponse(tokens=pb.TokenChunk(text=piece))
                yield pb.GenerateResponse(final=pb.Final(finish_reason=pb.LENGTH, usage=pb.Usage(completion_tokens=n)))
                return
            streamer = TextIteratorStreamer(self.tok, skip_prompt=True)
            kwargs = dict(input_ids=ids, max_new_tokens=n, do_sample=False, streamer=streamer)
            if request.stopping.ignore_eos:
                kwargs["min_new_tokens"] = n
            thread = threading.Thread(target=self.model.generate, kwargs=kwargs)
            thread.start()
            it = iter(streamer)
            while True:
                piece = await asyncio.to_thread(next, it, None)
                if piece is None:
                    break
                if piece:
                    yield pb.GenerateResponse(tokens=pb.TokenChunk(text=piece))
            thread.join()
        yield pb.GenerateResponse(final=pb.Final(finish_reason=pb.LENGTH, usage=pb.Usage(completion_tokens=n)))


    async def _generate_tokens(self, ids, n: int, ignore_eos: bool):
        streamer = TokenStreamer(self.tok, asyncio.get_running_loop())
        kwargs = dict(input_ids=ids, max_new_tokens=n, do_sample=False, streamer=streamer)
        if ignore_eos:
            kwargs["min_new_tokens"] = n
        thread = threading.Thread(target=self.model.generate, kwargs=kwargs)
        thread.start()
        while (piece := await streamer.queue.get()) is not None:
            yield piece
        thread.join()


async def main(model_dir: str, port_file: str, streamer: str) -> None:
    server = grpc.aio.server()
    generation_pb2_grpc.add_GenerationServicer_to_server(BaselineGeneration(model_dir, streamer), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(port_file).write_text(str(port))
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], "word" if sys.argv[3:] == ["--streamer", "word"] else "token"))
