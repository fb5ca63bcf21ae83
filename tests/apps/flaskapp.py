"""A Flask app: url_for must honour the mount (SCRIPT_NAME)."""
from flask import Flask, request, url_for

app = Flask(__name__)


@app.route("/")
def index():
    return "flask index link=%s script=%s" % (url_for("other"), request.script_root)


@app.route("/other")
def other():
    return "flask other"


@app.route("/form", methods=["POST"])
def form():
    return "flask form name=%s" % request.form.get("name", "")


application = app
