"""The baseline a user would write: a gRPC Generation server that runs `model.generate`
with `TextIteratorStreamer`, one request at a time. Used by `llm_serving.py` only.

    python benchmarks/baseline_server.py MODEL_DIR PORT_FILE

It serves galactic.v1.Generation/Generate (text-only chunks, as the streamer yields them),
binds port 0 and writes the port it got to PORT_FILE once it is ready.
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

from galactic.v1 import generation_pb2 as pb  # noqa: E402
from galactic.v1 import generation_pb2_grpc  # noqa: E402


class BaselineGeneration(generation_pb2_grpc.GenerationServicer):
    def __init__(self, model_dir: str) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        self.tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.lock = asyncio.Lock()  # one generate() at a time, as a plain server would

    async def Generate(self, request, context):
        n = request.stopping.max_new_tokens or 64
        ids = torch.tensor([self.tok(request.prompt)["input_ids"]])
        async with self.lock:
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


async def main(model_dir: str, port_file: str) -> None:
    server = grpc.aio.server()
    generation_pb2_grpc.add_GenerationServicer_to_server(BaselineGeneration(model_dir), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(port_file).write_text(str(port))
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
