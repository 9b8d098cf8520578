// Keys for the review console: 1-9 pick the label with that number, 0 is "neither".
// Loaded as a file because the Content-Security-Policy forbids inline script and handlers.
// It never writes markup: the page is rendered (and escaped) by the server.
"use strict";

(function () {
  let sent = false;

  function typing(target) {
    if (!(target instanceof Element)) {
      return false;
    }
    const tag = target.tagName;
    return tag === "TEXTAREA" || tag === "INPUT" || tag === "SELECT" || target.isContentEditable;
  }

  document.addEventListener("keydown", function (event) {
    // A digit typed into the note is part of the note, and Ctrl/Alt/Meta+digit belong to
    // the browser (tab switching), so neither picks a label.
    if (event.ctrlKey || event.altKey || event.metaKey || event.repeat || typing(event.target)) {
      return;
    }
    if (!/^[0-9]$/.test(event.key)) {
      return;
    }
    const button = document.querySelector('form.decide button[data-key="' + event.key + '"]');
    if (button === null || sent) {
      return;
    }
    event.preventDefault();
    // One submission per page: a second key press would only come back "duplicate".
    sent = true;
    button.click();
  });

  // Clicking a button counts too: one decision per page, however fast the double click.
  document.addEventListener("submit", function (event) {
    if (event.target instanceof HTMLFormElement && event.target.classList.contains("decide")) {
      if (event.target.dataset.sent === "1") {
        event.preventDefault();
        return;
      }
      event.target.dataset.sent = "1";
    }
  });
})();
