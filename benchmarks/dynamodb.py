"""DynamoDB: praison_db against raw boto3 on the same dynalite, for the two calls an agent makes all the time.

    python -m benchmarks.dynamodb                 # 300 appends and 300 reads of the newest 20 per side
    python -m benchmarks.dynamodb --calls 2000 --json

- append: praison_db's ``add_message`` (read the header, commit on it with a conditional write, copy the message to
  its items, remove the commit entry: 5 requests) against the plain raw pattern ``UpdateItem ADD n 1`` then a
  ``PutItem`` of the message with ``attribute_not_exists`` (2 requests, not safe against a crash between them).
- newest 20: ``get_messages(limit=20)`` (one descending Query that starts at the header) against one descending
  ``Query ... Limit 20`` of the raw table.

Both sides run in one process, alternating (benchmarks.harness), each in a session of its own table, on dynalite
started for the run (tests.servers: npm's dynalite, in memory, on a free loopback port).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/dynamodb.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from .harness import PRAISON, RAW, content, pair_main, interleaved, summarize  # noqa: E402

RESUME_N = 20


class RawSide:
    """A hand-written DynamoDB session: a counter item and one item per message, keyed by a zero-padded seq."""

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.client = boto3.client(
            "dynamodb", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x"
        )
        self.table = "raw_messages"
        self.client.create_table(
            TableName=self.table,
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            BillingMode="PAY_PER_REQUEST",
        )

    def append(self, sid: str, text: str) -> None:
        counter = self.client.update_item(
            TableName=self.table,
            Key={"pk": {"S": sid}, "sk": {"S": "S"}},
            UpdateExpression="ADD n :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="UPDATED_NEW",
        )
        seq = int(counter["Attributes"]["n"]["N"])
        self.client.put_item(
            TableName=self.table,
            Item={"pk": {"S": sid}, "sk": {"S": f"M#{seq:020d}"}, "b": {"S": json.dumps({"role": "user", "content": text})}},
            ConditionExpression="attribute_not_exists(pk)",
        )

    def newest(self, sid: str, n: int) -> list[Any]:
        answer = self.client.query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :m)",
            ExpressionAttributeValues={":pk": {"S": sid}, ":m": {"S": "M#"}},
            ScanIndexForward=False,
            Limit=n,
            ConsistentRead=True,
        )
        return [json.loads(i["b"]["S"]) for i in reversed(answer["Items"])]


def run(calls: int) -> dict[str, Any]:
    from praison_db.facade import open_store
    from tests import servers

    results: dict[str, Any] = {}
    with servers.dynalite_server() as base:
        endpoint = base.split("endpoint=", 1)[1]
        conv = open_store(f"dynamodb://us-east-1/bench_?endpoint={endpoint}", "conversations")
        raw = RawSide(endpoint)
        try:
            conv.create_session("bench")
            appends = {
                PRAISON: lambda i: lambda: conv.add_message("bench", "user", content(i)),
                RAW: lambda i: lambda: raw.append("bench", content(i)),
            }
            results["append"] = summarize(interleaved(appends, calls, 10, 300))
            reads = {
                PRAISON: lambda i: lambda: conv.get_messages("bench", limit=RESUME_N),
                RAW: lambda i: lambda: raw.newest("bench", RESUME_N),
            }
            assert len(conv.get_messages("bench", limit=RESUME_N)) == len(raw.newest("bench", RESUME_N)) == RESUME_N
            results["newest_20"] = summarize(interleaved(reads, calls, 10, 300))
        finally:
            conv.close()
            raw.client.close()
    return results


def main(argv: list[str] | None = None) -> None:
    pair_main(argv, __doc__ or "", run, "raw boto3")


if __name__ == "__main__":
    main()
