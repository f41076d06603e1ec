"""The reward server's routes, one module-level APIRouter per area; `app.py` includes them.

Routers reach the app's state through dependencies (`Runtime`, `require_api_key`),
never through closures over `create_app`. Checks that can fail with a problem
(ratings disabled, no rater signed in) run inside the endpoint, after FastAPI has
validated the request, so a malformed request still gets its 422 first.
"""
