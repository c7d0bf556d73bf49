"""The jwt method: the client's password is a JSON Web Token, checked with pyjwt.

The signature (RS256/ES256 with a key of `jwks_url` or `jwks_file` chosen by the token's `kid`, or
`public_key_file`; a token without a `kid` is tried against each of them; HS256 with `secret`), `exp` and `nbf` (with `leeway_s`), `iss` and `aud` when configured;
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

    def _candidates(self, cfg, token, algorithm):
        """The keys that may have signed token: for a token with a `kid`, the key set's key of that
        id (else public_key_file); for one without, every key of the sets and public_key_file."""
        import jwt
        if algorithm == "HS256":
            if not cfg.secret:
                raise Refused("HS256 token, and no auth.jwt.secret")
            return [cfg.secret]
        kid = jwt.get_unverified_header(token).get("kid")
        keys, problems = [], []
        if cfg.jwks_url:  # (urllib on gevent's sockets: a slow endpoint holds up only this login)
            client = self._clients.get((cfg.jwks_url, cfg.jwks_refresh_s))
            if client is None:
                client = self._clients[(cfg.jwks_url, cfg.jwks_refresh_s)] = jwt.PyJWKClient(
                    cfg.jwks_url, lifespan=cfg.jwks_refresh_s, timeout=10)
            try:
                if kid is not None:
                    keys.append(client.get_signing_key_from_jwt(token).key)
                else:
                    keys.extend(k.key for k in client.get_signing_keys())
            except jwt.PyJWKClientError as e:
                problems.append(f"auth.jwt.jwks_url: {e}")
        if cfg.jwks_file:
            found = self._file(cfg.jwks_file, lambda data: jwt.PyJWKSet.from_dict(json.loads(data)))
            keys.extend(k.key for k in found.keys if kid is None or k.key_id == kid)
            if kid is not None and not keys:
                problems.append(f"no key {kid!r} in auth.jwt.jwks_file")
        if cfg.public_key_file and (kid is None or not keys):
            keys.append(self._file(cfg.public_key_file, lambda data: data))
        if not keys:
            raise Refused("; ".join(problems) or f"{algorithm} token, and no auth.jwt.public_key_file or jwks_file")
        return keys

    def check(self, config, user, token):
        """The claims of token if it lets user in; raises Refused."""
        import jwt
        cfg = config.auth.jwt
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
            if algorithm not in cfg.algorithms:
                raise Refused(f"algorithm {algorithm!r} is not in auth.jwt.algorithms")
            claims, failed = None, None
            for key in self._candidates(cfg, token, algorithm):  # the first key whose signature checks out
                try:
                    claims = jwt.decode(token, key, algorithms=[algorithm], issuer=cfg.issuer or None,
                                        audience=cfg.audience or None, leeway=cfg.leeway_s,
                                        options={"require": ["exp"], "verify_aud": bool(cfg.audience)})
                    break
                except (jwt.InvalidSignatureError, jwt.InvalidKeyError, ValueError) as e:
                    failed = e  # (another key's token: try the next)
            if claims is None:
                raise failed
        except jwt.PyJWTError as e:
            raise Refused(f"{type(e).__name__}: {e}") from None
        except (OSError, ValueError, TypeError) as e:
            raise Refused(f"key: {e}") from None
        name = claims.get(cfg.user_claim)
        if not isinstance(name, str):
            raise Refused(f"no {cfg.user_claim!r} claim")
        check_identity(config, [name], user, cfg.user_claim)
        return claims


METHOD = JwtMethod()
