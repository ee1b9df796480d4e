"""A2A agent cards in and out, checked with the a2a-sdk package's own types: a card in the shape
of the A2A samples goes in through the SDK's register_a2a, comes out of the HTTP port byte for
byte and parses back equal; Find matches the agent by its skills; a bad card is INVALID_ARGUMENT
naming the field; after its TTL (manual clock) the agent leaves /a2a/agents."""

from __future__ import annotations

import json

import httpx
import pytest
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentProvider, AgentSkill
from google.protobuf.json_format import MessageToJson, Parse

from agentkeeper import AgentKeeperClient, InvalidArgument

TTL = 10


def sample_card() -> AgentCard:
    """The currency agent of the A2A samples, in A2A v1.0's shape."""
    return AgentCard(
        name="Currency Agent",
        description="Helps with exchange rates for currencies",
        version="1.0.0",
        supported_interfaces=[AgentInterface(url="http://localhost:10000/", protocol_binding="JSONRPC",
                                             protocol_version="1.0")],
        provider=AgentProvider(organization="A2A Samples", url="https://example.com"),
        capabilities=AgentCapabilities(streaming=True, push_notifications=True),
        default_input_modes=["text", "text/plain"],
        default_output_modes=["text", "text/plain"],
        skills=[AgentSkill(
            id="convert_currency",
            name="Currency Exchange Rates Tool",
            description="Helps with exchange values between various currencies",
            tags=["currency conversion", "currency exchange"],
            examples=["What is exchange rate between USD and GBP?"],
        )],
    )


@pytest.fixture
def manual(binary: str):
    """A manual-clock embedded daemon: time moves only with advance()."""
    with AgentKeeperClient.embedded(binary=binary, clock="manual", seed=7, timeout=10) as c:
        yield c


def http(client: AgentKeeperClient, path: str) -> httpx.Response:
    assert client.daemon is not None
    return httpx.get(f"{client.daemon.metrics_url}{path}", timeout=30)


def test_an_a2a_card_goes_in_comes_out_byte_for_byte_and_parses_equal_with_a2a_sdk(manual: AgentKeeperClient):
    card = sample_card()
    text = MessageToJson(card)
    manual.register("weather", "forecasts the weather", tools=["forecast"], ttl=60, heartbeat=False)
    agent = manual.register_a2a(text, ttl=TTL, tools=["fx"], heartbeat=False)

    served = http(manual, f"/a2a/agents/{agent.agent_id}/agent-card.json")
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    assert served.text == text, "kept verbatim"
    assert Parse(served.text, AgentCard()) == card

    info = manual.get_agent(agent.agent_id)
    assert (info.card.name, info.card.version, info.card.tools) == ("Currency Agent", "1.0.0", ["fx"])
    assert info.card.a2a_card == text
    assert [c.name for c in info.card.capabilities] == ["Currency Exchange Rates Tool"]
    found = manual.find("convert GBP to USD exchange rate", limit=2)
    assert found[0].agent_id == agent.agent_id, "Find matches the agent by its skill"

    listed = http(manual, "/a2a/agents?query=currency+exchange").json()["agents"]
    assert [a["agent_id"] for a in listed][0] == agent.agent_id
    assert Parse(httpx.get(f"{manual.daemon.metrics_url}{listed[0]['card_url']}").text, AgentCard()) == card
    for entry in listed:
        Parse(json.dumps(entry["card"]), AgentCard())  # every listed card is an A2A card

    manual.advance(TTL + 1)
    assert manual.get_agent(agent.agent_id).status.value != "ALIVE"
    ids = [a["agent_id"] for a in http(manual, "/a2a/agents").json()["agents"]]
    assert agent.agent_id not in ids, "an agent past its TTL is not offered to discovery"
    assert http(manual, f"/a2a/agents/{agent.agent_id}/agent-card.json").text == text


def test_a_plain_agent_shows_an_a2a_card_built_from_its_card(manual: AgentKeeperClient):
    plain = manual.register("crawler", "fetches web pages", "3.1", tools=["fetch"], ttl=60,
                            capabilities=["crawl sites"], heartbeat=False)
    card = Parse(http(manual, f"/a2a/agents/{plain.agent_id}/agent-card.json").text, AgentCard())
    assert (card.name, card.description, card.version) == ("crawler", "fetches web pages", "3.1")
    assert [s.name for s in card.skills] == ["crawl sites", "fetch"]
    assert http(manual, "/a2a/agents/0123/agent-card.json").status_code == 404


@pytest.mark.parametrize(("card", "field"), [
    ({"description": "d", "version": "1", "skills": []}, "card.a2a_card_json: name is missing"),
    ({"name": "n", "description": "d", "version": "1", "skills": [{"id": "s", "name": "s", "description": "s"}]},
     "card.a2a_card_json: skills[0].tags is missing"),
    ("{not json", "card.a2a_card_json: not JSON"),
])
def test_a_bad_a2a_card_is_invalid_argument_naming_the_field(manual: AgentKeeperClient, card, field):
    with pytest.raises(InvalidArgument) as refused:
        manual.register_a2a(card, ttl=TTL, heartbeat=False)
    assert field in str(refused.value)
    assert http(manual, "/a2a/agents").json() == {"agents": []}, "nothing registered"
