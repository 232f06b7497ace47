"""The stub OpenAI-compatible server answers real HTTP on 127.0.0.1."""

import httpx

from agentgym.testing.stub_server import StubServer


def test_chat_models_health_and_errors():
    def responder(request):
        if request["messages"][-1]["content"] == "call":
            return {"role": "assistant", "content": "",
                    "tool_calls": [{"id": "c1", "type": "function",
                                    "function": {"name": "add", "arguments": "{}"}}]}
        return "pong"

    with StubServer(responder) as server, httpx.Client(base_url=server.base_url) as client:
        body = {"model": "m", "n": 2, "messages": [{"role": "user", "content": "ping"}]}
        data = client.post("/chat/completions", json=body).json()
        assert [c["message"]["content"] for c in data["choices"]] == ["pong", "pong"]
        body["messages"][0]["content"] = "call"
        data = client.post("/chat/completions", json=body).json()
        assert data["choices"][0]["finish_reason"] == "tool_calls"
        assert client.get("/models").json()["data"][0]["id"] == "stub"
        assert client.get(server.base_url.replace("/v1", "/health")).status_code == 200
        assert client.post("/chat/completions", content=b"{bad").status_code == 400
        assert client.get("/nope").status_code == 404
        assert server.requests == 2
