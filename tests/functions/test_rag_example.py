"""examples/rag against the real servers: neo4j-graphrag's OpenAIEmbeddings and OpenAILLM
(plain and with a pydantic response_format, i.e. structured output) pointed at a chat server
and an embedding server. Neo4j itself cannot run here: `rag.py ingest` / `ask` are not run
(docs/rag.md says so). run.sh installs examples/rag/requirements.txt into its own venv and
sets BITNET_RAG_PYTHON."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from test_embeddings import embed_model  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_talks_to_both_servers(model_server, start_server, embed_model):  # noqa: F811
    python = os.environ.get("BITNET_RAG_PYTHON")
    if not python:
        pytest.skip("BITNET_RAG_PYTHON unset: tests/functions/run.sh installs the example's venv")
    embed = start_server(env={"BITNET_MODEL": str(embed_model)})
    embed.wait_ready()
    env = dict(os.environ, BITNET_CHAT_URL=model_server.url + "/v1", BITNET_EMBED_URL=embed.url + "/v1",
               API_KEY="unused")
    out = subprocess.run([python, str(ROOT / "examples/rag/rag.py"), "check"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[0]["embedder"] == "ok" and lines[0]["dimensions"] == 256
    assert abs(lines[0]["norm"] - 1) < 1e-5
    assert lines[1]["llm"] == "ok" and lines[1]["content"]
    # Structured output through the library: the reply parsed into the pydantic model.
    value = lines[2]["value"]
    assert set(value) == {"entities", "relations"} and len(value["relations"]) <= 12
