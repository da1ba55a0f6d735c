"""The integration catalogue: every spec loads, every endpoint builds the request its provider documents.

The table below is written by hand from the providers' API references, not
derived from the specs: a spec that drifts from it fails here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.specs import catalogue
from gateway.specs.params import validate as validate_params
from gateway.specs.registry import load_registry
from gateway.specs.spec import ApiKeyAuth, OAuth2Auth
from gateway.upstream.build import build_request

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "gateway" / "integrations"
REGISTRY = load_registry([FOLDER])
TOKEN = {"Authorization": "Bearer test-token"}
CLOUD_ID = "11223344-a1b2-3b33-c444-def123456789"
CONNECTION_EXTRA = {"jira": {"cloud_id": CLOUD_ID}}
# Headers every request of an integration carries, besides the token.
SPEC_HEADERS = {
    "github": {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"},
    "notion": {"Notion-Version": "2022-06-28"},
    "stripe": {"Stripe-Version": "2024-06-20"},
}
NO_BODY = object()


@dataclasses.dataclass(frozen=True)
class Expect:
    id: str
    params: dict[str, Any]
    method: str
    url: str
    query: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    json: Any = NO_BODY
    form: dict[str, str] | None = None
    # For GraphQL endpoints: how the query starts, and the variables sent.
    operation: str | None = None


def E(id: str, params: dict[str, Any], method: str, url: str, **kwargs: Any) -> Expect:  # noqa: N802
    return Expect(id, params, method, url, **kwargs)


GH = "https://api.github.com"
REPO = {"repo": "acme/webapp"}
SLACK = "https://slack.com/api"
TS = "1712345678.123456"
GCAL = "https://www.googleapis.com/calendar/v3"
START = {"dateTime": "2025-01-06T10:00:00+01:00", "timeZone": "Europe/Paris"}
END = {"dateTime": "2025-01-06T11:00:00+01:00", "timeZone": "Europe/Paris"}
GMAIL = "https://gmail.googleapis.com/gmail/v1/users/me"
MSG = "18c2f0a1b2c3d4e5"
DRIVE = "https://www.googleapis.com/drive/v3"
FILE = "1aBcD2eF-gH_3"
NOTION = "https://api.notion.com/v1"
PAGE = "59833787-2cf9-4fdf-8782-e53db20768a5"
DB = "d9824bdc84454327be8b5b47500af6ce"
PARAGRAPH = [{"object": "block", "type": "paragraph", "paragraph": {"rich_text": [{"text": {"content": "Hello"}}]}}]
LINEAR = "https://api.linear.app/graphql"
TEAM = "9cfb482a-81e3-4154-b5b9-2c805e70a02d"
JIRA = f"https://api.atlassian.com/ex/jira/{CLOUD_ID}/rest/api/3"
ADF = {"type": "doc", "version": 1, "content": [{"type": "paragraph", "content": [{"type": "text", "text": "Done"}]}]}
HUBSPOT = "https://api.hubapi.com/crm/v3"
DEAL_FILTER = [{"filters": [{"propertyName": "dealstage", "operator": "EQ", "value": "closedwon"}]}]
GRAPH = "https://graph.microsoft.com/v1.0/me"
MAIL_ID = "AAMkAGI2TG93AAA="
MS_START = {"dateTime": "2025-01-06T10:00:00", "timeZone": "Europe/Paris"}
MS_END = {"dateTime": "2025-01-06T11:00:00", "timeZone": "Europe/Paris"}
DROPBOX = "https://api.dropboxapi.com/2"
ASANA = "https://app.asana.com/api/1.0"
STRIPE = "https://api.stripe.com/v1"
OPENAI = "https://api.openai.com/v1"

TABLE = [
    # GitHub REST, 2022-11-28
    E("github.get_authenticated_user", {}, "GET", f"{GH}/user"),
    E(
        "github.list_repos",
        {"visibility": "private", "per_page": 50},
        "GET",
        f"{GH}/user/repos",
        query=[("visibility", "private"), ("per_page", "50")],
    ),
    E("github.get_repo", REPO, "GET", f"{GH}/repos/acme/webapp"),
    E(
        "github.list_issues",
        {**REPO, "state": "open", "labels": ["bug", "ui"]},
        "GET",
        f"{GH}/repos/acme/webapp/issues",
        query=[("state", "open"), ("labels", "bug,ui")],
    ),
    E("github.get_issue", {**REPO, "issue_number": 42}, "GET", f"{GH}/repos/acme/webapp/issues/42"),
    E(
        "github.create_issue",
        {**REPO, "title": "Bug report", "labels": ["bug"]},
        "POST",
        f"{GH}/repos/acme/webapp/issues",
        json={"title": "Bug report", "labels": ["bug"]},
    ),
    E(
        "github.update_issue",
        {**REPO, "issue_number": 42, "state": "closed", "state_reason": "completed"},
        "PATCH",
        f"{GH}/repos/acme/webapp/issues/42",
        json={"state": "closed", "state_reason": "completed"},
    ),
    E(
        "github.list_issue_comments",
        {**REPO, "issue_number": 42, "per_page": 10},
        "GET",
        f"{GH}/repos/acme/webapp/issues/42/comments",
        query=[("per_page", "10")],
    ),
    E(
        "github.create_issue_comment",
        {**REPO, "issue_number": 42, "body": "Thanks!"},
        "POST",
        f"{GH}/repos/acme/webapp/issues/42/comments",
        json={"body": "Thanks!"},
    ),
    E(
        "github.list_pull_requests",
        {**REPO, "state": "all", "base": "main"},
        "GET",
        f"{GH}/repos/acme/webapp/pulls",
        query=[("state", "all"), ("base", "main")],
    ),
    E("github.get_pull_request", {**REPO, "pull_number": 7}, "GET", f"{GH}/repos/acme/webapp/pulls/7"),
    E(
        "github.create_pull_request",
        {**REPO, "title": "Fix login", "head": "fix-login", "base": "main", "draft": True},
        "POST",
        f"{GH}/repos/acme/webapp/pulls",
        json={"title": "Fix login", "head": "fix-login", "base": "main", "draft": True},
    ),
    E(
        "github.merge_pull_request",
        {**REPO, "pull_number": 7, "merge_method": "squash"},
        "PUT",
        f"{GH}/repos/acme/webapp/pulls/7/merge",
        json={"merge_method": "squash"},
    ),
    E(
        "github.list_branches",
        {**REPO, "protected": True},
        "GET",
        f"{GH}/repos/acme/webapp/branches",
        query=[("protected", "true")],
    ),
    E(
        "github.get_file_contents",
        {**REPO, "path": "docs/README.md", "ref": "main"},
        "GET",
        f"{GH}/repos/acme/webapp/contents/docs/README.md",
        query=[("ref", "main")],
    ),
    E(
        "github.create_or_update_file",
        {**REPO, "path": "docs/a b.md", "message": "Update docs", "content": "SGk="},
        "PUT",
        f"{GH}/repos/acme/webapp/contents/docs/a%20b.md",
        json={"message": "Update docs", "content": "SGk="},
    ),
    E(
        "github.search_issues",
        {"q": "repo:acme/webapp is:open", "per_page": 5},
        "GET",
        f"{GH}/search/issues",
        query=[("q", "repo:acme/webapp is:open"), ("per_page", "5")],
    ),
    E(
        "github.search_repositories",
        {"q": "language:python", "sort": "stars"},
        "GET",
        f"{GH}/search/repositories",
        query=[("q", "language:python"), ("sort", "stars")],
    ),
    # Slack Web API
    E(
        "slack.post_message",
        {"channel": "C0123456789", "text": "Deploy finished", "thread_ts": TS},
        "POST",
        f"{SLACK}/chat.postMessage",
        json={"channel": "C0123456789", "text": "Deploy finished", "thread_ts": TS},
    ),
    E(
        "slack.update_message",
        {"channel": "C0123456789", "ts": TS, "text": "Edited"},
        "POST",
        f"{SLACK}/chat.update",
        json={"channel": "C0123456789", "ts": TS, "text": "Edited"},
    ),
    E(
        "slack.delete_message",
        {"channel": "C0123456789", "ts": TS},
        "POST",
        f"{SLACK}/chat.delete",
        json={"channel": "C0123456789", "ts": TS},
    ),
    E(
        "slack.schedule_message",
        {"channel": "C0123456789", "post_at": 1735689600, "text": "Standup"},
        "POST",
        f"{SLACK}/chat.scheduleMessage",
        json={"channel": "C0123456789", "post_at": 1735689600, "text": "Standup"},
    ),
    E(
        "slack.list_conversations",
        {"types": ["public_channel", "private_channel"], "limit": 200},
        "GET",
        f"{SLACK}/conversations.list",
        query=[("types", "public_channel,private_channel"), ("limit", "200")],
    ),
    E(
        "slack.get_conversation_history",
        {"channel": "C0123456789", "oldest": "1712000000.000000", "limit": 100, "cursor": "dXNlcjpVMEc5V0ZYTlo="},
        "GET",
        f"{SLACK}/conversations.history",
        query=[
            ("channel", "C0123456789"),
            ("oldest", "1712000000.000000"),
            ("limit", "100"),
            ("cursor", "dXNlcjpVMEc5V0ZYTlo="),
        ],
    ),
    E(
        "slack.get_thread_replies",
        {"channel": "C0123456789", "ts": TS},
        "GET",
        f"{SLACK}/conversations.replies",
        query=[("channel", "C0123456789"), ("ts", TS)],
    ),
    E(
        "slack.open_conversation",
        {"users": "U01,U02"},
        "POST",
        f"{SLACK}/conversations.open",
        form={"users": "U01,U02"},
    ),
    E("slack.list_users", {"limit": 200}, "GET", f"{SLACK}/users.list", query=[("limit", "200")]),
    E("slack.get_user", {"user": "U0123456789"}, "GET", f"{SLACK}/users.info", query=[("user", "U0123456789")]),
    E(
        "slack.lookup_user_by_email",
        {"email": "ada@example.com"},
        "GET",
        f"{SLACK}/users.lookupByEmail",
        query=[("email", "ada@example.com")],
    ),
    E(
        "slack.add_reaction",
        {"channel": "C0123456789", "timestamp": TS, "name": "thumbsup"},
        "POST",
        f"{SLACK}/reactions.add",
        form={"channel": "C0123456789", "timestamp": TS, "name": "thumbsup"},
    ),
    # Google Calendar v3
    E(
        "google-calendar.list_calendars",
        {"minAccessRole": "writer"},
        "GET",
        f"{GCAL}/users/me/calendarList",
        query=[("minAccessRole", "writer")],
    ),
    E(
        "google-calendar.list_events",
        {
            "calendarId": "primary",
            "timeMin": "2025-01-06T00:00:00Z",
            "singleEvents": True,
            "orderBy": "startTime",
            "maxResults": 10,
        },
        "GET",
        f"{GCAL}/calendars/primary/events",
        query=[
            ("timeMin", "2025-01-06T00:00:00Z"),
            ("singleEvents", "true"),
            ("orderBy", "startTime"),
            ("maxResults", "10"),
        ],
    ),
    E(
        "google-calendar.get_event",
        {"calendarId": "ada@example.com", "eventId": "7kq0c2n8g0o9r8s5"},
        "GET",
        f"{GCAL}/calendars/ada@example.com/events/7kq0c2n8g0o9r8s5",
    ),
    E(
        "google-calendar.create_event",
        {
            "calendarId": "primary",
            "summary": "Kickoff",
            "start": START,
            "end": END,
            "attendees": [{"email": "ada@example.com"}],
            "sendUpdates": "all",
        },
        "POST",
        f"{GCAL}/calendars/primary/events",
        query=[("sendUpdates", "all")],
        json={"summary": "Kickoff", "start": START, "end": END, "attendees": [{"email": "ada@example.com"}]},
    ),
    E(
        "google-calendar.update_event",
        {"calendarId": "primary", "eventId": "7kq0c2n8g0o9r8s5", "summary": "Moved"},
        "PATCH",
        f"{GCAL}/calendars/primary/events/7kq0c2n8g0o9r8s5",
        json={"summary": "Moved"},
    ),
    E(
        "google-calendar.delete_event",
        {"calendarId": "primary", "eventId": "7kq0c2n8g0o9r8s5", "sendUpdates": "none"},
        "DELETE",
        f"{GCAL}/calendars/primary/events/7kq0c2n8g0o9r8s5",
        query=[("sendUpdates", "none")],
    ),
    E(
        "google-calendar.quick_add_event",
        {"calendarId": "primary", "text": "Lunch with Ada tomorrow 12:30"},
        "POST",
        f"{GCAL}/calendars/primary/events/quickAdd",
        query=[("text", "Lunch with Ada tomorrow 12:30")],
        json={},
    ),
    E(
        "google-calendar.query_free_busy",
        {"timeMin": "2025-01-06T08:00:00Z", "timeMax": "2025-01-06T18:00:00Z", "items": [{"id": "primary"}]},
        "POST",
        f"{GCAL}/freeBusy",
        json={"timeMin": "2025-01-06T08:00:00Z", "timeMax": "2025-01-06T18:00:00Z", "items": [{"id": "primary"}]},
    ),
    # Gmail v1
    E("gmail.get_profile", {}, "GET", f"{GMAIL}/profile"),
    E(
        "gmail.list_messages",
        {"q": "is:unread", "labelIds": ["INBOX", "UNREAD"], "maxResults": 20},
        "GET",
        f"{GMAIL}/messages",
        query=[("q", "is:unread"), ("labelIds", "INBOX"), ("labelIds", "UNREAD"), ("maxResults", "20")],
    ),
    E(
        "gmail.get_message",
        {"id": MSG, "format": "metadata", "metadataHeaders": ["From", "Subject"]},
        "GET",
        f"{GMAIL}/messages/{MSG}",
        query=[("format", "metadata"), ("metadataHeaders", "From"), ("metadataHeaders", "Subject")],
    ),
    E(
        "gmail.send_message",
        {"raw": "VG86IGFkYQ", "threadId": MSG},
        "POST",
        f"{GMAIL}/messages/send",
        json={"raw": "VG86IGFkYQ", "threadId": MSG},
    ),
    E(
        "gmail.create_draft",
        {"message": {"raw": "VG86IGFkYQ"}},
        "POST",
        f"{GMAIL}/drafts",
        json={"message": {"raw": "VG86IGFkYQ"}},
    ),
    E(
        "gmail.modify_message_labels",
        {"id": MSG, "removeLabelIds": ["UNREAD"]},
        "POST",
        f"{GMAIL}/messages/{MSG}/modify",
        json={"removeLabelIds": ["UNREAD"]},
    ),
    E("gmail.trash_message", {"id": MSG}, "POST", f"{GMAIL}/messages/{MSG}/trash", json={}),
    E(
        "gmail.list_threads",
        {"q": "from:ada@example.com", "includeSpamTrash": False},
        "GET",
        f"{GMAIL}/threads",
        query=[("q", "from:ada@example.com"), ("includeSpamTrash", "false")],
    ),
    E(
        "gmail.get_thread",
        {"id": MSG, "format": "minimal"},
        "GET",
        f"{GMAIL}/threads/{MSG}",
        query=[("format", "minimal")],
    ),
    E("gmail.list_labels", {}, "GET", f"{GMAIL}/labels"),
    # Google Drive v3
    E("google-drive.get_about", {}, "GET", f"{DRIVE}/about", query=[("fields", "user,storageQuota")]),
    E(
        "google-drive.list_files",
        {"q": "name contains 'report'", "pageSize": 50, "fields": "files(id,name)"},
        "GET",
        f"{DRIVE}/files",
        query=[("q", "name contains 'report'"), ("pageSize", "50"), ("fields", "files(id,name)")],
    ),
    E(
        "google-drive.get_file",
        {"fileId": FILE, "fields": "id,name,mimeType"},
        "GET",
        f"{DRIVE}/files/{FILE}",
        query=[("fields", "id,name,mimeType")],
    ),
    E("google-drive.download_file", {"fileId": FILE}, "GET", f"{DRIVE}/files/{FILE}", query=[("alt", "media")]),
    E(
        "google-drive.export_file",
        {"fileId": FILE, "mimeType": "text/plain"},
        "GET",
        f"{DRIVE}/files/{FILE}/export",
        query=[("mimeType", "text/plain")],
    ),
    E(
        "google-drive.create_folder",
        {"name": "Reports 2025", "parents": ["0AbC"]},
        "POST",
        f"{DRIVE}/files",
        json={"name": "Reports 2025", "mimeType": "application/vnd.google-apps.folder", "parents": ["0AbC"]},
    ),
    E(
        "google-drive.update_file",
        {"fileId": FILE, "name": "Renamed", "addParents": "0NeW", "removeParents": "0OlD"},
        "PATCH",
        f"{DRIVE}/files/{FILE}",
        query=[("addParents", "0NeW"), ("removeParents", "0OlD")],
        json={"name": "Renamed"},
    ),
    E(
        "google-drive.copy_file",
        {"fileId": FILE, "name": "Copy"},
        "POST",
        f"{DRIVE}/files/{FILE}/copy",
        json={"name": "Copy"},
    ),
    E(
        "google-drive.share_file",
        {
            "fileId": FILE,
            "role": "reader",
            "type": "user",
            "emailAddress": "ada@example.com",
            "sendNotificationEmail": False,
        },
        "POST",
        f"{DRIVE}/files/{FILE}/permissions",
        query=[("sendNotificationEmail", "false")],
        json={"role": "reader", "type": "user", "emailAddress": "ada@example.com"},
    ),
    E(
        "google-drive.delete_file",
        {"fileId": FILE, "supportsAllDrives": True},
        "DELETE",
        f"{DRIVE}/files/{FILE}",
        query=[("supportsAllDrives", "true")],
    ),
    # Notion, 2022-06-28
    E(
        "notion.search",
        {"query": "Meeting notes", "filter": {"property": "object", "value": "page"}, "page_size": 10},
        "POST",
        f"{NOTION}/search",
        json={"query": "Meeting notes", "filter": {"property": "object", "value": "page"}, "page_size": 10},
    ),
    E("notion.get_page", {"page_id": PAGE}, "GET", f"{NOTION}/pages/{PAGE}"),
    E(
        "notion.create_page",
        {"parent": {"page_id": PAGE}, "properties": {"title": {"title": [{"text": {"content": "Notes"}}]}}},
        "POST",
        f"{NOTION}/pages",
        json={"parent": {"page_id": PAGE}, "properties": {"title": {"title": [{"text": {"content": "Notes"}}]}}},
    ),
    E(
        "notion.update_page",
        {"page_id": PAGE, "archived": True},
        "PATCH",
        f"{NOTION}/pages/{PAGE}",
        json={"archived": True},
    ),
    E(
        "notion.get_block_children",
        {"block_id": PAGE, "page_size": 50},
        "GET",
        f"{NOTION}/blocks/{PAGE}/children",
        query=[("page_size", "50")],
    ),
    E(
        "notion.append_block_children",
        {"block_id": PAGE, "children": PARAGRAPH},
        "PATCH",
        f"{NOTION}/blocks/{PAGE}/children",
        json={"children": PARAGRAPH},
    ),
    E("notion.get_database", {"database_id": DB}, "GET", f"{NOTION}/databases/{DB}"),
    E(
        "notion.query_database",
        {"database_id": DB, "filter": {"property": "Status", "status": {"equals": "Done"}}, "page_size": 20},
        "POST",
        f"{NOTION}/databases/{DB}/query",
        json={"filter": {"property": "Status", "status": {"equals": "Done"}}, "page_size": 20},
    ),
    E(
        "notion.create_comment",
        {"parent": {"page_id": PAGE}, "rich_text": [{"text": {"content": "Looks good!"}}]},
        "POST",
        f"{NOTION}/comments",
        json={"parent": {"page_id": PAGE}, "rich_text": [{"text": {"content": "Looks good!"}}]},
    ),
    E("notion.list_users", {"page_size": 100}, "GET", f"{NOTION}/users", query=[("page_size", "100")]),
    E("notion.get_bot_user", {}, "GET", f"{NOTION}/users/me"),
    # Linear GraphQL
    E("linear.get_viewer", {}, "POST", LINEAR, operation="query Viewer", json={}),
    E("linear.list_teams", {"first": 50}, "POST", LINEAR, operation="query Teams", json={"first": 50}),
    E(
        "linear.list_issues",
        {"filter": {"assignee": {"isMe": {"eq": True}}}, "first": 20},
        "POST",
        LINEAR,
        operation="query Issues",
        json={"filter": {"assignee": {"isMe": {"eq": True}}}, "first": 20},
    ),
    E(
        "linear.search_issues",
        {"term": "login timeout", "first": 10},
        "POST",
        LINEAR,
        operation="query SearchIssues",
        json={"term": "login timeout", "first": 10},
    ),
    E("linear.get_issue", {"id": "ENG-123"}, "POST", LINEAR, operation="query Issue", json={"id": "ENG-123"}),
    E(
        "linear.create_issue",
        {"teamId": TEAM, "title": "Login times out", "priority": 2},
        "POST",
        LINEAR,
        operation="mutation IssueCreate",
        json={"teamId": TEAM, "title": "Login times out", "priority": 2},
    ),
    E(
        "linear.update_issue",
        {"id": "ENG-123", "stateId": "a1b2"},
        "POST",
        LINEAR,
        operation="mutation IssueUpdate",
        json={"id": "ENG-123", "stateId": "a1b2"},
    ),
    E(
        "linear.create_comment",
        {"issueId": "ENG-123", "body": "Fixed."},
        "POST",
        LINEAR,
        operation="mutation CommentCreate",
        json={"issueId": "ENG-123", "body": "Fixed."},
    ),
    E(
        "linear.list_workflow_states",
        {"teamId": TEAM},
        "POST",
        LINEAR,
        operation="query WorkflowStates",
        json={"teamId": TEAM},
    ),
    E(
        "linear.list_projects",
        {"first": 25, "after": "cursor-1"},
        "POST",
        LINEAR,
        operation="query Projects",
        json={"first": 25, "after": "cursor-1"},
    ),
    E("linear.list_users", {}, "POST", LINEAR, operation="query Users", json={}),
    # Jira Cloud REST v3 through api.atlassian.com
    E("jira.get_myself", {}, "GET", f"{JIRA}/myself"),
    E(
        "jira.search_issues",
        {"jql": "project = ENG", "fields": ["summary", "status"], "maxResults": 50},
        "GET",
        f"{JIRA}/search/jql",
        query=[("jql", "project = ENG"), ("fields", "summary,status"), ("maxResults", "50")],
    ),
    E(
        "jira.get_issue",
        {"issueIdOrKey": "ENG-42", "fields": ["summary"]},
        "GET",
        f"{JIRA}/issue/ENG-42",
        query=[("fields", "summary")],
    ),
    E(
        "jira.create_issue",
        {"fields": {"project": {"key": "ENG"}, "issuetype": {"name": "Task"}, "summary": "Write docs"}},
        "POST",
        f"{JIRA}/issue",
        json={"fields": {"project": {"key": "ENG"}, "issuetype": {"name": "Task"}, "summary": "Write docs"}},
    ),
    E(
        "jira.update_issue",
        {"issueIdOrKey": "ENG-42", "fields": {"summary": "New summary"}, "notifyUsers": False},
        "PUT",
        f"{JIRA}/issue/ENG-42",
        query=[("notifyUsers", "false")],
        json={"fields": {"summary": "New summary"}},
    ),
    E(
        "jira.assign_issue",
        {"issueIdOrKey": "ENG-42", "accountId": "5b10ac8d82e05b22cc7d4ef5"},
        "PUT",
        f"{JIRA}/issue/ENG-42/assignee",
        json={"accountId": "5b10ac8d82e05b22cc7d4ef5"},
    ),
    E("jira.get_transitions", {"issueIdOrKey": "ENG-42"}, "GET", f"{JIRA}/issue/ENG-42/transitions"),
    E(
        "jira.transition_issue",
        {"issueIdOrKey": "ENG-42", "transition": {"id": "31"}},
        "POST",
        f"{JIRA}/issue/ENG-42/transitions",
        json={"transition": {"id": "31"}},
    ),
    E(
        "jira.list_comments",
        {"issueIdOrKey": "10042", "startAt": 0, "maxResults": 20},
        "GET",
        f"{JIRA}/issue/10042/comment",
        query=[("startAt", "0"), ("maxResults", "20")],
    ),
    E(
        "jira.add_comment",
        {"issueIdOrKey": "ENG-42", "body": ADF},
        "POST",
        f"{JIRA}/issue/ENG-42/comment",
        json={"body": ADF},
    ),
    E(
        "jira.list_projects",
        {"query": "eng", "maxResults": 10},
        "GET",
        f"{JIRA}/project/search",
        query=[("query", "eng"), ("maxResults", "10")],
    ),
    E("jira.find_users", {"query": "ada"}, "GET", f"{JIRA}/user/search", query=[("query", "ada")]),
    # HubSpot CRM v3
    E(
        "hubspot.list_contacts",
        {"limit": 50, "properties": ["email", "firstname"]},
        "GET",
        f"{HUBSPOT}/objects/contacts",
        query=[("limit", "50"), ("properties", "email,firstname")],
    ),
    E(
        "hubspot.get_contact",
        {"contactId": "ada@example.com", "idProperty": "email"},
        "GET",
        f"{HUBSPOT}/objects/contacts/ada@example.com",
        query=[("idProperty", "email")],
    ),
    E(
        "hubspot.search_contacts",
        {"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": "ada@example.com"}]}]},
        "POST",
        f"{HUBSPOT}/objects/contacts/search",
        json={"filterGroups": [{"filters": [{"propertyName": "email", "operator": "EQ", "value": "ada@example.com"}]}]},
    ),
    E(
        "hubspot.create_contact",
        {"properties": {"email": "ada@example.com", "firstname": "Ada"}},
        "POST",
        f"{HUBSPOT}/objects/contacts",
        json={"properties": {"email": "ada@example.com", "firstname": "Ada"}},
    ),
    E(
        "hubspot.update_contact",
        {"contactId": "51", "properties": {"lifecyclestage": "customer"}},
        "PATCH",
        f"{HUBSPOT}/objects/contacts/51",
        json={"properties": {"lifecyclestage": "customer"}},
    ),
    E(
        "hubspot.search_companies",
        {"query": "acme", "limit": 5},
        "POST",
        f"{HUBSPOT}/objects/companies/search",
        json={"query": "acme", "limit": 5},
    ),
    E(
        "hubspot.create_company",
        {"properties": {"name": "Acme", "domain": "acme.com"}},
        "POST",
        f"{HUBSPOT}/objects/companies",
        json={"properties": {"name": "Acme", "domain": "acme.com"}},
    ),
    E(
        "hubspot.list_deals",
        {"properties": ["dealname", "amount"], "after": "20"},
        "GET",
        f"{HUBSPOT}/objects/deals",
        query=[("after", "20"), ("properties", "dealname,amount")],
    ),
    E(
        "hubspot.search_deals",
        {"filterGroups": DEAL_FILTER, "properties": ["dealname"]},
        "POST",
        f"{HUBSPOT}/objects/deals/search",
        json={"filterGroups": DEAL_FILTER, "properties": ["dealname"]},
    ),
    E(
        "hubspot.create_deal",
        {"properties": {"dealname": "Acme renewal", "dealstage": "appointmentscheduled"}},
        "POST",
        f"{HUBSPOT}/objects/deals",
        json={"properties": {"dealname": "Acme renewal", "dealstage": "appointmentscheduled"}},
    ),
    E(
        "hubspot.update_deal",
        {"dealId": "1234567", "properties": {"dealstage": "closedwon"}},
        "PATCH",
        f"{HUBSPOT}/objects/deals/1234567",
        json={"properties": {"dealstage": "closedwon"}},
    ),
    E(
        "hubspot.list_owners",
        {"email": "ada@example.com"},
        "GET",
        f"{HUBSPOT}/owners",
        query=[("email", "ada@example.com")],
    ),
    # Microsoft Graph v1.0
    E(
        "microsoft-graph.get_me",
        {"select": ["displayName", "mail"]},
        "GET",
        GRAPH,
        query=[("$select", "displayName,mail")],
    ),
    E(
        "microsoft-graph.list_messages",
        {"top": 10, "filter": "isRead eq false", "orderby": "receivedDateTime desc"},
        "GET",
        f"{GRAPH}/messages",
        query=[("$top", "10"), ("$filter", "isRead eq false"), ("$orderby", "receivedDateTime desc")],
    ),
    E(
        "microsoft-graph.list_folder_messages",
        {"folder_id": "inbox", "top": 5, "search": '"invoice"'},
        "GET",
        f"{GRAPH}/mailFolders/inbox/messages",
        query=[("$top", "5"), ("$search", '"invoice"')],
    ),
    E(
        "microsoft-graph.get_message",
        {"message_id": MAIL_ID, "body_type": 'outlook.body-content-type="text"'},
        "GET",
        f"{GRAPH}/messages/{MAIL_ID}",
        headers={"Prefer": 'outlook.body-content-type="text"'},
    ),
    E(
        "microsoft-graph.send_mail",
        {"message": {"subject": "Hi", "toRecipients": [{"emailAddress": {"address": "ada@example.com"}}]}},
        "POST",
        f"{GRAPH}/sendMail",
        json={"message": {"subject": "Hi", "toRecipients": [{"emailAddress": {"address": "ada@example.com"}}]}},
    ),
    E(
        "microsoft-graph.reply_to_message",
        {"message_id": MAIL_ID, "comment": "Thanks"},
        "POST",
        f"{GRAPH}/messages/{MAIL_ID}/reply",
        json={"comment": "Thanks"},
    ),
    E(
        "microsoft-graph.update_message",
        {"message_id": MAIL_ID, "isRead": True},
        "PATCH",
        f"{GRAPH}/messages/{MAIL_ID}",
        json={"isRead": True},
    ),
    E(
        "microsoft-graph.move_message",
        {"message_id": MAIL_ID, "destinationId": "archive"},
        "POST",
        f"{GRAPH}/messages/{MAIL_ID}/move",
        json={"destinationId": "archive"},
    ),
    E("microsoft-graph.list_mail_folders", {"top": 50}, "GET", f"{GRAPH}/mailFolders", query=[("$top", "50")]),
    E(
        "microsoft-graph.list_calendar_view",
        {
            "startDateTime": "2025-01-06T00:00:00Z",
            "endDateTime": "2025-01-13T00:00:00Z",
            "time_zone": 'outlook.timezone="W. Europe Standard Time"',
        },
        "GET",
        f"{GRAPH}/calendarView",
        query=[("startDateTime", "2025-01-06T00:00:00Z"), ("endDateTime", "2025-01-13T00:00:00Z")],
        headers={"Prefer": 'outlook.timezone="W. Europe Standard Time"'},
    ),
    E(
        "microsoft-graph.list_events",
        {"top": 10, "select": ["subject", "start"]},
        "GET",
        f"{GRAPH}/events",
        query=[("$top", "10"), ("$select", "subject,start")],
    ),
    E(
        "microsoft-graph.create_event",
        {"subject": "Kickoff", "start": MS_START, "end": MS_END, "isOnlineMeeting": True},
        "POST",
        f"{GRAPH}/events",
        json={"subject": "Kickoff", "start": MS_START, "end": MS_END, "isOnlineMeeting": True},
    ),
    E(
        "microsoft-graph.update_event",
        {"event_id": MAIL_ID, "subject": "Moved"},
        "PATCH",
        f"{GRAPH}/events/{MAIL_ID}",
        json={"subject": "Moved"},
    ),
    E("microsoft-graph.delete_event", {"event_id": MAIL_ID}, "DELETE", f"{GRAPH}/events/{MAIL_ID}"),
    # Dropbox API v2 (RPC: every call a POST with JSON arguments)
    E(
        "dropbox.list_folder",
        {"path": "", "recursive": False, "limit": 100},
        "POST",
        f"{DROPBOX}/files/list_folder",
        json={"path": "", "recursive": False, "limit": 100},
    ),
    E(
        "dropbox.list_folder_continue",
        {"cursor": "AAE"},
        "POST",
        f"{DROPBOX}/files/list_folder/continue",
        json={"cursor": "AAE"},
    ),
    E(
        "dropbox.get_metadata",
        {"path": "/Reports/q1.pdf"},
        "POST",
        f"{DROPBOX}/files/get_metadata",
        json={"path": "/Reports/q1.pdf"},
    ),
    E(
        "dropbox.search",
        {"query": "report", "options": {"path": "/Reports", "max_results": 20}},
        "POST",
        f"{DROPBOX}/files/search_v2",
        json={"query": "report", "options": {"path": "/Reports", "max_results": 20}},
    ),
    E(
        "dropbox.search_continue",
        {"cursor": "AAF"},
        "POST",
        f"{DROPBOX}/files/search/continue_v2",
        json={"cursor": "AAF"},
    ),
    E(
        "dropbox.get_temporary_link",
        {"path": "id:a4ayc_80_OEAAAAAAAAAXw"},
        "POST",
        f"{DROPBOX}/files/get_temporary_link",
        json={"path": "id:a4ayc_80_OEAAAAAAAAAXw"},
    ),
    E(
        "dropbox.create_folder",
        {"path": "/Reports/2025", "autorename": True},
        "POST",
        f"{DROPBOX}/files/create_folder_v2",
        json={"path": "/Reports/2025", "autorename": True},
    ),
    E(
        "dropbox.move",
        {"from_path": "/Inbox/r.pdf", "to_path": "/Reports/r.pdf"},
        "POST",
        f"{DROPBOX}/files/move_v2",
        json={"from_path": "/Inbox/r.pdf", "to_path": "/Reports/r.pdf"},
    ),
    E(
        "dropbox.copy",
        {"from_path": "/Reports/r.pdf", "to_path": "/Archive/r.pdf"},
        "POST",
        f"{DROPBOX}/files/copy_v2",
        json={"from_path": "/Reports/r.pdf", "to_path": "/Archive/r.pdf"},
    ),
    E("dropbox.delete", {"path": "/Old"}, "POST", f"{DROPBOX}/files/delete_v2", json={"path": "/Old"}),
    E(
        "dropbox.create_shared_link",
        {"path": "/Reports/q1.pdf", "settings": {"audience": "public"}},
        "POST",
        f"{DROPBOX}/sharing/create_shared_link_with_settings",
        json={"path": "/Reports/q1.pdf", "settings": {"audience": "public"}},
    ),
    E("dropbox.list_shared_links", {}, "POST", f"{DROPBOX}/sharing/list_shared_links", json={}),
    # Asana REST 1.0 (write bodies in a {"data": …} envelope)
    E(
        "asana.get_me",
        {"opt_fields": ["name", "email"]},
        "GET",
        f"{ASANA}/users/me",
        query=[("opt_fields", "name,email")],
    ),
    E("asana.list_workspaces", {"limit": 50}, "GET", f"{ASANA}/workspaces", query=[("limit", "50")]),
    E(
        "asana.list_projects",
        {"workspace": "123", "archived": False},
        "GET",
        f"{ASANA}/projects",
        query=[("workspace", "123"), ("archived", "false")],
    ),
    E(
        "asana.list_tasks",
        {"assignee": "me", "workspace": "123", "completed_since": "now", "opt_fields": ["name", "due_on"]},
        "GET",
        f"{ASANA}/tasks",
        query=[("assignee", "me"), ("workspace", "123"), ("completed_since", "now"), ("opt_fields", "name,due_on")],
    ),
    E(
        "asana.search_tasks",
        {"workspace_gid": "123", "text": "invoice", "assignee_any": "me", "completed": False},
        "GET",
        f"{ASANA}/workspaces/123/tasks/search",
        query=[("text", "invoice"), ("assignee.any", "me"), ("completed", "false")],
    ),
    E("asana.get_task", {"task_gid": "1204"}, "GET", f"{ASANA}/tasks/1204"),
    E(
        "asana.create_task",
        {"data": {"name": "Send the invoice", "projects": ["1204"]}},
        "POST",
        f"{ASANA}/tasks",
        json={"data": {"name": "Send the invoice", "projects": ["1204"]}},
    ),
    E(
        "asana.update_task",
        {"task_gid": "1204", "data": {"completed": True}},
        "PUT",
        f"{ASANA}/tasks/1204",
        json={"data": {"completed": True}},
    ),
    E(
        "asana.list_task_comments",
        {"task_gid": "1204", "limit": 20},
        "GET",
        f"{ASANA}/tasks/1204/stories",
        query=[("limit", "20")],
    ),
    E(
        "asana.add_comment",
        {"task_gid": "1204", "data": {"text": "Done"}},
        "POST",
        f"{ASANA}/tasks/1204/stories",
        json={"data": {"text": "Done"}},
    ),
    # Stripe, 2024-06-20 (form-encoded bodies)
    E("stripe.get_balance", {}, "GET", f"{STRIPE}/balance"),
    E(
        "stripe.list_customers",
        {"email": "ada@example.com", "limit": 10, "expand": ["data.default_source"]},
        "GET",
        f"{STRIPE}/customers",
        query=[("email", "ada@example.com"), ("limit", "10"), ("expand[]", "data.default_source")],
    ),
    E(
        "stripe.search_customers",
        {"query": "email~'example.com'", "page": "abc"},
        "GET",
        f"{STRIPE}/customers/search",
        query=[("query", "email~'example.com'"), ("page", "abc")],
    ),
    E("stripe.get_customer", {"customer": "cus_NffrFeUfNV2Hib"}, "GET", f"{STRIPE}/customers/cus_NffrFeUfNV2Hib"),
    E(
        "stripe.create_customer",
        {"email": "ada@example.com", "name": "Ada Lovelace", "idempotency_key": "8e03978e"},
        "POST",
        f"{STRIPE}/customers",
        headers={"Idempotency-Key": "8e03978e"},
        form={"email": "ada@example.com", "name": "Ada Lovelace"},
    ),
    E(
        "stripe.update_customer",
        {"customer": "cus_NffrFeUfNV2Hib", "phone": "+441234567890"},
        "POST",
        f"{STRIPE}/customers/cus_NffrFeUfNV2Hib",
        form={"phone": "+441234567890"},
    ),
    E(
        "stripe.list_payment_intents",
        {"customer": "cus_NffrFeUfNV2Hib", "limit": 5},
        "GET",
        f"{STRIPE}/payment_intents",
        query=[("customer", "cus_NffrFeUfNV2Hib"), ("limit", "5")],
    ),
    E("stripe.get_payment_intent", {"intent": "pi_3MtwBw"}, "GET", f"{STRIPE}/payment_intents/pi_3MtwBw"),
    E(
        "stripe.create_payment_intent",
        {"amount": 1999, "currency": "usd", "automatic_payment_methods_enabled": True},
        "POST",
        f"{STRIPE}/payment_intents",
        form={"amount": "1999", "currency": "usd", "automatic_payment_methods[enabled]": "true"},
    ),
    E(
        "stripe.list_charges",
        {"payment_intent": "pi_3MtwBw"},
        "GET",
        f"{STRIPE}/charges",
        query=[("payment_intent", "pi_3MtwBw")],
    ),
    E(
        "stripe.create_refund",
        {"payment_intent": "pi_3MtwBw", "amount": 500, "reason": "requested_by_customer"},
        "POST",
        f"{STRIPE}/refunds",
        form={"payment_intent": "pi_3MtwBw", "amount": "500", "reason": "requested_by_customer"},
    ),
    E(
        "stripe.list_invoices",
        {"customer": "cus_NffrFeUfNV2Hib", "status": "open"},
        "GET",
        f"{STRIPE}/invoices",
        query=[("customer", "cus_NffrFeUfNV2Hib"), ("status", "open")],
    ),
    E(
        "stripe.list_subscriptions",
        {"status": "all", "limit": 100},
        "GET",
        f"{STRIPE}/subscriptions",
        query=[("status", "all"), ("limit", "100")],
    ),
    # OpenAI v1
    E(
        "openai.create_response",
        {"model": "gpt-4.1-mini", "input_messages": [{"role": "user", "content": "Hello"}], "max_output_tokens": 200},
        "POST",
        f"{OPENAI}/responses",
        json={"model": "gpt-4.1-mini", "input": [{"role": "user", "content": "Hello"}], "max_output_tokens": 200},
    ),
    E("openai.get_response", {"response_id": "resp_67ccd2bed1ec"}, "GET", f"{OPENAI}/responses/resp_67ccd2bed1ec"),
    E(
        "openai.create_chat_completion",
        {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "Hello"}], "temperature": 0.2},
        "POST",
        f"{OPENAI}/chat/completions",
        json={"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "Hello"}], "temperature": 0.2},
    ),
    E(
        "openai.create_embedding",
        {"model": "text-embedding-3-small", "inputs": ["first text", "second text"]},
        "POST",
        f"{OPENAI}/embeddings",
        json={"model": "text-embedding-3-small", "input": ["first text", "second text"]},
    ),
    E("openai.create_moderation", {"input": "hello"}, "POST", f"{OPENAI}/moderations", json={"input": "hello"}),
    E(
        "openai.create_image",
        {"prompt": "A watercolour lighthouse", "model": "gpt-image-1", "size": "1024x1024"},
        "POST",
        f"{OPENAI}/images/generations",
        json={"prompt": "A watercolour lighthouse", "model": "gpt-image-1", "size": "1024x1024"},
    ),
    E("openai.list_models", {}, "GET", f"{OPENAI}/models"),
    E(
        "openai.get_model",
        {"model": "ft:gpt-4.1-mini:acme::abc123"},
        "GET",
        f"{OPENAI}/models/ft:gpt-4.1-mini:acme::abc123",
    ),
]


def _endpoint(case_id: str):  # type: ignore[no-untyped-def]
    integration, name = case_id.split(".")
    endpoint = REGISTRY.endpoint(integration, name)
    assert endpoint is not None, f"{case_id} is not in the catalogue"
    return endpoint


def test_the_catalogue_loads_and_is_big_enough() -> None:
    integrations = list(REGISTRY)
    assert len(integrations) >= 12
    assert sum(len(i.endpoints) for i in integrations) >= 90
    assert sum(1 for i in integrations if i.auth_type == "api_key") >= 2
    required = {"github", "slack", "google-calendar", "gmail", "google-drive", "notion", "linear", "jira"}
    required |= {"hubspot", "microsoft-graph", "dropbox", "asana", "stripe", "openai"}
    assert required <= set(REGISTRY.integrations)


def test_every_endpoint_has_an_expectation() -> None:
    ids = [case.id for case in TABLE]
    assert len(ids) == len(set(ids)), "an endpoint appears twice in TABLE"
    catalogue_ids = {f"{e.integration.name}.{e.name}" for e in REGISTRY.endpoints()}
    assert set(ids) == catalogue_ids, (
        f"missing from TABLE: {sorted(catalogue_ids - set(ids))}; not in the catalogue: {sorted(set(ids) - catalogue_ids)}"
    )


@pytest.mark.parametrize("case", TABLE, ids=[case.id for case in TABLE])
def test_the_upstream_request(case: Expect) -> None:
    endpoint = _endpoint(case.id)
    integration = endpoint.integration
    request = build_request(
        endpoint,
        validate_params(endpoint, case.params),
        base_url=integration.spec.base_url,
        auth_headers=dict(TOKEN),
        connection_extra=CONNECTION_EXTRA.get(integration.name, {}),
    )
    assert request.method == case.method
    assert str(request.url) == case.url
    assert request.query == case.query
    assert request.headers == {**SPEC_HEADERS.get(integration.name, {}), **case.headers, **TOKEN}
    if case.operation is not None:
        assert re.match(rf"\s*{re.escape(case.operation)}\b", request.json_body["query"])
        assert request.json_body["variables"] == case.json
    else:
        assert request.json_body == (None if case.json is NO_BODY else case.json)
    assert request.form_body == case.form


@pytest.mark.parametrize("endpoint", REGISTRY.endpoints(), ids=lambda e: f"{e.integration.name}.{e.name}")
def test_the_documented_example_is_valid(endpoint) -> None:  # type: ignore[no-untyped-def]
    # The example a person sees in GET /v1/<integration>/<endpoint> must pass validation.
    validate_params(endpoint, endpoint.example_params())


GRAPHQL_VARIABLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([\[\]A-Za-z0-9_!]+)")


@pytest.mark.parametrize(
    "endpoint", [e for e in REGISTRY.endpoints() if e.spec.graphql], ids=lambda e: f"{e.integration.name}.{e.name}"
)
def test_graphql_variables_are_the_body_params(endpoint) -> None:  # type: ignore[no-untyped-def]
    query = endpoint.spec.graphql.query
    header = query[: query.index("{")]
    declared = dict(GRAPHQL_VARIABLE.findall(header))
    params = {p.name or name: p for name, p in endpoint.spec.params.items()}
    assert set(declared) == set(params), "every variable is a body param and every param a variable"
    assert all(p.location == "body" for p in params.values())
    for name, graphql_type in declared.items():
        assert graphql_type.endswith("!") == params[name].required, f"${name}: required must match '!'"
        assert f"${name}" in query[len(header) :], f"${name} is declared but not used"


def test_endpoint_scopes_are_requested_when_connecting() -> None:
    for integration in REGISTRY:
        auth = integration.spec.auth
        if not isinstance(auth, OAuth2Auth):
            continue
        for name, endpoint in integration.endpoints.items():
            missing = set(endpoint.spec.scopes) - set(auth.scopes)
            assert not missing, f"{integration.name}.{name} needs {missing}, which auth.scopes does not request"


def test_no_yaml_value_is_an_accidental_null() -> None:
    # An unquoted ', ' inside a {flow: mapping} silently starts a new key with a null value.
    def nulls(node: Any, path: str) -> list[str]:
        found: list[str] = []
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for key, value in items:
            found += [f"{path}.{key}"] if value is None else nulls(value, f"{path}.{key}")
        return found

    for path in sorted(FOLDER.glob("*.yaml")):
        assert nulls(yaml.safe_load(path.read_text()), path.stem) == []


def test_names_map_back_from_their_environment_variables() -> None:
    # GATEWAY_<NAME>_CLIENT_ID is read back by turning '_' into '-', so names use '-'.
    for integration in REGISTRY:
        assert "_" not in integration.name
        assert integration.source.stem == integration.name


def test_provider_quirks_are_spec_fields() -> None:
    def oauth(name: str) -> OAuth2Auth:
        auth = REGISTRY.integrations[name].spec.auth
        assert isinstance(auth, OAuth2Auth)
        return auth

    for google in ("google-calendar", "gmail", "google-drive"):
        assert oauth(google).authorize_params["access_type"] == "offline"
        assert oauth(google).authorize_params["prompt"] == "consent"
    assert oauth("slack").scope_separator == oauth("linear").scope_separator == ","
    assert oauth("notion").refreshable is False
    assert oauth("notion").token_auth_method == "client_secret_basic"
    assert oauth("dropbox").authorize_params == {"token_access_type": "offline"}
    assert oauth("jira").authorize_params["audience"] == "api.atlassian.com"
    assert "offline_access" in oauth("jira").scopes and "offline_access" in oauth("microsoft-graph").scopes
    [lookup] = oauth("jira").lookups
    assert (lookup.url, lookup.field, lookup.store_as) == (
        "https://api.atlassian.com/oauth/token/accessible-resources",
        "0.id",
        "cloud_id",
    )
    for endpoint in REGISTRY.integrations["slack"].endpoints.values():
        assert endpoint.spec.error_when is not None
        assert (endpoint.spec.error_when.field, endpoint.spec.error_when.equals) == ("ok", False)
        assert endpoint.spec.error_when.message_field == "error"
    for name in ("stripe", "openai"):
        auth = REGISTRY.integrations[name].spec.auth
        assert isinstance(auth, ApiKeyAuth)
        assert (auth.placement, auth.name, auth.template) == ("header", "Authorization", "Bearer {api_key}")
    assert all(
        e.spec.body_type == "form" for e in REGISTRY.integrations["stripe"].endpoints.values() if e.method == "POST"
    )
    assert all(e.spec.graphql for e in REGISTRY.integrations["linear"].endpoints.values())


def test_the_readme_table_is_current() -> None:
    text = (ROOT / "README.md").read_text()
    assert catalogue.section(text, catalogue.TABLE_MARKERS) == catalogue.markdown_table(REGISTRY), (
        f"README.md's integration table is stale: run `{catalogue.COMMAND}`"
    )


def test_the_endpoint_list_in_the_guide_is_current() -> None:
    text = (ROOT / "docs" / "integrations.md").read_text()
    assert catalogue.section(text, catalogue.ENDPOINT_MARKERS) == catalogue.endpoint_list(REGISTRY), (
        f"docs/integrations.md's endpoint list is stale: run `{catalogue.COMMAND}`"
    )


def test_the_table_names_every_integration() -> None:
    table = catalogue.markdown_table(REGISTRY)
    for integration in REGISTRY:
        row = next(line for line in table.splitlines() if f"| `{integration.name}` |" in line)
        assert f"| {len(integration.endpoints)} |" in row and integration.spec.reference in row


def test_replace_section_keeps_everything_outside_the_markers() -> None:
    markers = catalogue.TABLE_MARKERS
    text = f"before\n{markers[0]}\nold\n{markers[1]}\nafter\n"
    assert catalogue.replace_section(text, markers, "new") == f"before\n{markers[0]}\nnew\n{markers[1]}\nafter\n"
    with pytest.raises(ValueError):
        catalogue.replace_section("no markers here", markers, "new")
