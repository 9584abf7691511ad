// Entry point: restores the session from localStorage (if any) and shows
// the login screen or the chat.

import "./style.css";
import { App } from "./app";
import { Ui } from "./ui";

const app = new App();
const ui = new Ui(document.getElementById("app")!, app);
if (app.loggedIn) void app.start();
ui.followHash();
ui.render();
// For debugging from the console; the tests do not use it.
(window as unknown as { pigeon: App }).pigeon = app;
