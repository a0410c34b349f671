"""``GET/POST /rules`` and ``DELETE /rules/{id}``: merchandising rules (:mod:`engine.rules`), admin only."""

from engine.rules import RuleError, parse_rule
from engine.service.http import ApiError


def add_rules_routes(app, engine, dependencies) -> None:
    """Register the rule routes; a bad rule is a 422 naming the wrong field, an unknown id a 404."""
    from fastapi import Request

    @app.get("/rules", summary="The merchandising rules, in the order they apply", dependencies=dependencies)
    def list_rules():
        version, rules = engine.rules.rules()
        return {"version": version, "rules": [r.to_dict() for r in rules]}

    @app.post("/rules", summary="Add or replace a merchandising rule", dependencies=dependencies)
    async def put_rule(request: Request):
        try:
            raw = await request.json()
        except Exception:
            raise ApiError(422, "body", "expected a JSON rule object") from None
        try:
            rule = parse_rule(raw, engine.known_product, engine.rules.normalize)
            version = engine.rules.put(rule)
        except RuleError as e:
            raise ApiError(422, e.field, e.message) from None
        return {"version": version, "rule": rule.to_dict()}

    @app.delete("/rules/{rule_id}", summary="Delete a merchandising rule", dependencies=dependencies)
    def delete_rule(rule_id: str):
        try:
            version = engine.rules.delete(rule_id)
        except KeyError:
            raise ApiError(404, "rule_id", f"no stored rule {rule_id!r}") from None
        return {"version": version, "deleted": rule_id}
