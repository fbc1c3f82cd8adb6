"""A function behind a function URL: greets ``?name=`` on GET, echoes a JSON body on POST.

The event is payload format 2.0 (docs/function-urls.md); the result, with ``statusCode``, is the
HTTP response. Try it with ``function_url: {port: 9001}`` and
``curl 'http://127.0.0.1:9001/hello?name=Ada'`` or ``curl -d '{"a": 1}' -H 'content-type:
application/json' http://127.0.0.1:9001/echo``.
"""

import base64
import json


def handler(event, context):
    method = event["requestContext"]["http"]["method"]
    if method == "GET":
        name = (event.get("queryStringParameters") or {}).get("name", "world")
        return {"statusCode": 200, "headers": {"content-type": "text/plain"}, "body": f"hello, {name}\n"}
    if method != "POST":
        return {"statusCode": 405, "headers": {"allow": "GET, POST"}, "body": ""}
    body = event.get("body", "")
    if event["isBase64Encoded"]:
        body = base64.b64decode(body).decode("utf-8", "replace")
    try:
        document = json.loads(body)
    except ValueError:
        return {"statusCode": 400, "body": json.dumps({"message": "the body is not JSON"})}
    # Any JSON value without statusCode is a 200 application/json answer with that JSON.
    return {"echo": document, "requestId": context.aws_request_id}
