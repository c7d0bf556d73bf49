"""The jwt method: the client's password is a JSON Web Token, checked with pyjwt.

The signature (RS256/ES256 with `public_key_file` or a key of `jwks_url` or `jwks_file` chosen by
the token's `kid`; HS256 with `secret`), `exp` and `nbf` (with `leeway_s`), `iss` and `aud` when configured;
then the claim `user_claim` must name the login user, directly or through `[auth.map]`.
"""
import json
import os

from .rules import Refused, check_identity


class JwtMethod:
    def __init__(self):
        self._keys = {}  # path -> (mtime, loaded key material)
        self._clients = {}  # (jwks_url, refresh) -> jwt.PyJWKClient (its own cache of the key set)

    def _file(self, path, load):
        mtime = os.stat(path).st_mtime
        cached = self._keys.get(path)
        if cached is None or cached[0] != mtime:  # (re-read when it changes: keys rotate)
            with open(path, "rb") as f:
                cached = self._keys[path] = (mtime, load(f.read()))
        return cached[1]

    def _key(self, cfg, token, algorithm):
        import jwt
        if algorithm == "HS256":
            if not cfg.secret:
                raise Refused("HS256 token, and no auth.jwt.secret")
            return cfg.secret
        if cfg.jwks_url:  # (urllib on gevent's sockets: a slow endpoint holds up only this login)
            client = self._clients.get((cfg.jwks_url, cfg.jwks_refresh_s))
            if client is None:
                client = self._clients[(cfg.jwks_url, cfg.jwks_refresh_s)] = jwt.PyJWKClient(
                    cfg.jwks_url, lifespan=cfg.jwks_refresh_s, timeout=10)
            try:
                return client.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientError as e:
                if not (cfg.jwks_file or cfg.public_key_file):
                    raise Refused(f"auth.jwt.jwks_url: {e}") from None
        if cfg.jwks_file:
            keys = self._file(cfg.jwks_file, lambda data: jwt.PyJWKSet.from_dict(json.loads(data)))
            kid = jwt.get_unverified_header(token).get("kid")
            for key in keys.keys:
                if kid is None or key.key_id == kid:
                    return key.key
            if not cfg.public_key_file:
                raise Refused(f"no key {kid!r} in auth.jwt.jwks_file")
        if cfg.public_key_file:
            return self._file(cfg.public_key_file, lambda data: data)
        raise Refused(f"{algorithm} token, and no auth.jwt.public_key_file or jwks_file")

    def check(self, config, user, token):
        """The claims of token if it lets user in; raises Refused."""
        import jwt
        cfg = config.auth.jwt
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            if algorithm not in cfg.algorithms:
                raise Refused(f"algorithm {algorithm!r} is not in auth.jwt.algorithms")
            claims = jwt.decode(token, self._key(cfg, token, algorithm), algorithms=[algorithm],
                                issuer=cfg.issuer or None, audience=cfg.audience or None,
                                leeway=cfg.leeway_s,
                                options={"require": ["exp"], "verify_aud": bool(cfg.audience)})
        except jwt.PyJWTError as e:
            raise Refused(f"{type(e).__name__}: {e}") from None
        except (OSError, ValueError) as e:
            raise Refused(f"key: {e}") from None
        name = claims.get(cfg.user_claim)
        if not isinstance(name, str):
            raise Refused(f"no {cfg.user_claim!r} claim")
        check_identity(config, [name], user, cfg.user_claim)
        return claims


METHOD = JwtMethod()
