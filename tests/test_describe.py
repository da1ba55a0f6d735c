"""The docs routes and the OpenAPI document generated from the specs."""

from __future__ import annotations

from openapi_spec_validator import validate

from tests.conftest import Gateway


def test_list_show_and_endpoint_docs(gateway: Gateway) -> None:
    listed = gateway.http.get("/v1/integrations").json()["integrations"]
    assert {"github", "fakeapi"} <= {i["name"] for i in listed}
    github = gateway.http.get("/v1/github").json()
    assert github["reference"].startswith("GitHub REST API")
    assert "create_issue" in {e["name"] for e in github["endpoints"]}
    endpoint = gateway.http.get("/v1/github/create_issue").json()
    assert endpoint["upstream"] == {"method": "POST", "path": "/repos/{repo}/issues"}
    assert endpoint["params"]["required"] == ["repo", "title"]
    assert endpoint["example"]["body"]["params"]["repo"] == "acme/webapp"
    assert endpoint["tool_name"] == "github_create_issue"
    listed = gateway.http.get("/v1/github/list_issues").json()
    assert listed["pagination"]["style"] == "link_header"
    assert gateway.http.get("/v1/nope").json()["error"] == "not_found"
    assert gateway.http.get("/v1/github/nope").status_code == 404


def test_example_request_works_as_documented(gateway: Gateway, account, provider) -> None:
    _, secret = account
    example = gateway.http.get("/v1/github/create_issue").json()["example"]
    response = gateway.http.post(
        "/v1/github/create_issue", json=example["body"], headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 201


def test_openapi_is_valid_3_1(gateway: Gateway) -> None:
    document = gateway.http.get("/openapi.json").json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    operation = document["paths"]["/v1/github/create_issue"]["post"]
    assert operation["operationId"] == "github_create_issue"
    assert "403" in operation["responses"] and "429" in operation["responses"]
