"""The reward server on Ray Serve: the same FastAPI app, its model scorers in deployments.

- `options.py`: the application's arguments (what `serve run`/`serve deploy` configs hold)
- `app.py`: `build_app(args)`, the Serve application builder
  (`reward_server.ray_serve.app:build_app`)
- `ingress.py`: the ingress deployment, our FastAPI app as it is (protocol, auth, limits,
  rating queue), with the light scorers (JPEG, human ratings) in its own process
- `replica.py`: one deployment per model scorer, batching across requests with `@serve.batch`
- `remote.py`: the ingress side of a model scorer: its description and the queue that
  calls its replicas

Nothing here is imported by the plain server; `ray[serve]` is the `ray` extra.
"""
