"""The oauth2 method: the client's password is an OAuth 2.0 access token, checked by RFC 7662 token
introspection at `[auth.oauth2] introspection_url` (HTTP POST, the proxy's client credentials in
HTTP Basic auth). An inactive token is refused; an active one must name the login user in
`user_claim` (default `username`, else `sub`), directly or through `[auth.map]`. Answers are
cached (by the token's SHA-256) until the token's `exp`, at most `cache_ttl_s`.
"""
import base64
import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request

from cachetools import TTLCache

from .rules import Refused, check_identity


class OAuth2Method:
    def __init__(self):
        self.cache = TTLCache(maxsize=10000, ttl=3600)  # sha256(token) -> (valid until, answer)

    def introspect(self, cfg, token):
        body = urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"}).encode()
        request = urllib.request.Request(cfg.introspection_url, data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        if cfg.client_id:
            pair = f"{cfg.client_id}:{cfg.client_secret}".encode()
            request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
                answer = json.load(response)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise Refused(f"introspection failed: {e}") from None
        if not isinstance(answer, dict):
            raise Refused("introspection answered no JSON object")
        return answer

    def check(self, config, user, token):
        cfg = config.auth.oauth2
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.time()
        cached = self.cache.get(key)
        if cached is not None and cached[0] > now:
            answer = cached[1]
        else:
            answer = self.introspect(cfg, token)
            until = now + cfg.cache_ttl_s
            if isinstance(answer.get("exp"), (int, float)):
                until = min(until, answer["exp"])
            self.cache[key] = (until, answer)
        if answer.get("active") is not True:
            raise Refused("token inactive")
        if isinstance(answer.get("exp"), (int, float)) and answer["exp"] <= now:
            raise Refused("token expired")
        name = answer.get(cfg.user_claim) or answer.get("sub")
        if not isinstance(name, str):
            raise Refused(f"no {cfg.user_claim!r} in the introspection answer")
        check_identity(config, [name], user, cfg.user_claim)
        return answer


METHOD = OAuth2Method()
