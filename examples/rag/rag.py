#!/usr/bin/env python3
"""Graph RAG on BitNet with neo4j-graphrag, both models served by `bitnet serve`:

    python rag.py ingest notes.md other.txt    # chunks + embeddings + extracted entities -> Neo4j
    python rag.py ask "What does BitNet store per weight?"
    python rag.py check                        # the embedder and the LLM only, no Neo4j

Ingest splits each file into paragraphs, embeds them through /v1/embeddings (the embedding
model), stores (:Chunk {id, text, embedding}) with a cosine vector index, and asks the chat
model for the entities and relations of each chunk under a JSON schema (structured output:
the reply always parses), stored as (:Entity)-[:MENTIONED_IN]->(:Chunk) and
(:Entity)-[:RELATED {type}]->(:Entity). Ask retrieves the closest chunks (VectorRetriever)
and answers with GraphRAG.

Environment: BITNET_CHAT_URL (default http://bitnet:8080/v1), BITNET_EMBED_URL (default
http://bitnet-embed:8080/v1), API_KEY, BITNET_CHAT_MODEL / BITNET_EMBED_MODEL (any name: a
one-model server answers with its own), NEO4J_URI (bolt://neo4j:7687), NEO4J_USER (neo4j),
NEO4J_PASSWORD.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from neo4j_graphrag.embeddings import OpenAIEmbeddings
from neo4j_graphrag.llm import OpenAILLM
from pydantic import BaseModel, Field

INDEX = "bitnet_chunks"


class Relation(BaseModel):
    source: str = Field(max_length=60)
    type: str = Field(max_length=30)
    target: str = Field(max_length=60)


class Extraction(BaseModel):
    entities: list[str] = Field(max_length=12)
    relations: list[Relation] = Field(max_length=12)


def env(name: str, default: str | None = None) -> str:
    v = os.environ.get(name, default)
    if v is None:
        sys.exit(f"rag.py: set {name}")
    return v


def embedder() -> OpenAIEmbeddings:
    return OpenAIEmbeddings(model=env("BITNET_EMBED_MODEL", "bitnet-embedding-0.6b"),
                            base_url=env("BITNET_EMBED_URL", "http://bitnet-embed:8080/v1"),
                            api_key=env("API_KEY", "unused"))


def llm(max_tokens: int = 256) -> OpenAILLM:
    return OpenAILLM(model_name=env("BITNET_CHAT_MODEL", "bitnet-b1.58-2b-4t"),
                     base_url=env("BITNET_CHAT_URL", "http://bitnet:8080/v1"),
                     api_key=env("API_KEY", "unused"),
                     model_params={"max_tokens": max_tokens, "temperature": 0})


def extract(model: OpenAILLM, text: str) -> Extraction:
    # A list of messages: neo4j-graphrag sends response_format (as a JSON schema) only then.
    prompt = f"List the entities and the relations between them in this text:\n\n{text}"
    reply = model.invoke([{"role": "user", "content": prompt}], response_format=Extraction)
    return Extraction.model_validate_json(reply.content)


def driver():
    import neo4j
    return neo4j.GraphDatabase.driver(env("NEO4J_URI", "bolt://neo4j:7687"),
                                      auth=(env("NEO4J_USER", "neo4j"), env("NEO4J_PASSWORD")))


def ingest(paths: list[str]) -> None:
    from neo4j_graphrag.indexes import create_vector_index, upsert_vectors
    emb, chat = embedder(), llm()
    chunks = []
    for p in paths:
        for para in Path(p).read_text().split("\n\n"):
            if para.strip():
                chunks.append(para.strip())
    vectors = [emb.embed_query(c) for c in chunks]
    ids = [hashlib.sha256(c.encode()).hexdigest()[:16] for c in chunks]
    with driver() as d:
        create_vector_index(d, INDEX, label="Chunk", embedding_property="embedding",
                            dimensions=len(vectors[0]), similarity_fn="cosine")
        d.execute_query("UNWIND $rows AS r MERGE (c:Chunk {id: r.id}) SET c.text = r.text",
                        rows=[{"id": i, "text": c} for i, c in zip(ids, chunks)])
        element_ids = [r["e"] for r in d.execute_query(
            "UNWIND $ids AS i MATCH (c:Chunk {id: i}) RETURN elementId(c) AS e", ids=ids).records]
        upsert_vectors(d, ids=element_ids, embedding_property="embedding", embeddings=vectors)
        for i, c in zip(ids, chunks):
            x = extract(chat, c)
            d.execute_query("MATCH (c:Chunk {id: $id}) UNWIND $names AS n MERGE (e:Entity {name: n}) "
                            "MERGE (e)-[:MENTIONED_IN]->(c)", id=i, names=x.entities)
            d.execute_query("UNWIND $rels AS r MERGE (a:Entity {name: r.source}) MERGE (b:Entity {name: r.target}) "
                            "MERGE (a)-[:RELATED {type: r.type}]->(b)", rels=[r.model_dump() for r in x.relations])
    print(f"ingested {len(chunks)} chunks from {len(paths)} files")


def ask(question: str) -> None:
    from neo4j_graphrag.generation import GraphRAG
    from neo4j_graphrag.retrievers import VectorRetriever
    with driver() as d:
        rag = GraphRAG(retriever=VectorRetriever(d, INDEX, embedder(), return_properties=["text"]), llm=llm())
        print(rag.search(query_text=question, retriever_config={"top_k": 3}).answer)


def check() -> None:
    """The two library classes against the servers, without Neo4j: one JSON line each."""
    emb, chat = embedder(), llm(max_tokens=64)
    v = emb.embed_query("What does BitNet store per weight?")
    print(json.dumps({"embedder": "ok", "dimensions": len(v), "norm": sum(x * x for x in v) ** 0.5}))
    reply = chat.invoke("Say hello.")
    print(json.dumps({"llm": "ok", "content": reply.content}))
    x = extract(llm(max_tokens=400), "Ada Lovelace worked with Charles Babbage on the Analytical Engine.")
    print(json.dumps({"extraction": "ok", "value": x.model_dump()}))


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:] or ["check"]
    if cmd == "ingest" and rest:
        ingest(rest)
    elif cmd == "ask" and rest:
        ask(" ".join(rest))
    elif cmd == "check":
        check()
    else:
        sys.exit(__doc__)
