"""The OpenAI-compatible HTTP API: a front end that translates, over the same engines,
tokens, tenants and limits as gRPC (STYLE.md habit 17).

- `app.py`: the aiohttp listener, its routes and the boundary every call crosses;
- `translate.py`: OpenAI JSON -> `GenerationRequest`s, engine outputs -> OpenAI objects;
- `errors.py`: exceptions -> OpenAI's error object and the HTTP status the SDK maps.
"""
