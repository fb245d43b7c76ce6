from tests.http.conftest import api, make_api  # noqa: F401 (fixtures)
