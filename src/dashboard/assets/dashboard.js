// Copy buttons: <button data-copy="ID"> copies the value of the input #ID to the clipboard.
// Served from the dashboard itself: the Content-Security-Policy allows no inline script.
"use strict";
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  const status = document.querySelector(".copied");
  if (!field) return;
  try {
    await navigator.clipboard.writeText(field.value);
    button.textContent = "Copied";
    if (status) status.textContent = "Copied to the clipboard.";
  } catch (_) {
    field.select();
    if (status) status.textContent = "Select the key and copy it with Ctrl+C (or Cmd+C).";
  }
});
