"""A local stand-in for the team's weather service: ``GET /weather?city=Paris``.

python -m examples.support.fake_weather    # serves on 127.0.0.1:8010
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

REPORTS = {
    "paris": {"city": "Paris", "temperature_c": 18, "conditions": "light rain"},
    "lisbon": {"city": "Lisbon", "temperature_c": 24, "conditions": "sunny"},
}


async def weather(request: Request) -> JSONResponse:
    report = REPORTS.get(request.query_params.get("city", "").strip().lower())
    if report is None:
        return JSONResponse({"error": "unknown city"}, status_code=404)
    return JSONResponse(report)


app = Starlette(routes=[Route("/weather", weather)])

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8010)
