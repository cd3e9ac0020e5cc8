// The documented TypeScript snippet ("Using Your API Key" → "In code"), unchanged but for the host,
// which the test substitutes for https://api.boxes.banata.dev. It is plain JavaScript too, so the
// machine's node runs it as an ES module (top-level await).
const response = await fetch("https://api.boxes.banata.dev/v1/browsers", {
  method: "POST",
  headers: {
    Authorization: `Bearer ${process.env.BANATA_API_KEY}`,
    "Content-Type": "application/json",
  },
  body: JSON.stringify({ weight: "light" }),
});

// Not part of the snippet: report what came back so the test can check it.
console.log(JSON.stringify({ status: response.status, body: await response.json() }));
