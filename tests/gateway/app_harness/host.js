// The host's side: load the app's HTML into a sandboxed iframe, complete the handshake through
// AppBridge, hand it the tool's input and result, and forward its tools/call requests to the
// test's real MCP client (window.hostCallTool, exposed by Playwright).
import { AppBridge, PostMessageTransport } from "@modelcontextprotocol/ext-apps/app-bridge";

const status = document.getElementById("harness-status");
window.hostCalls = [];
window.openedLinks = [];

window.startApp = async ({ html, tool, toolInput, toolResult }) => {
  const iframe = document.getElementById("app");
  const bridge = new AppBridge(
    null,
    { name: "compose-agent-harness", version: "1.0.0" },
    { serverTools: {}, logging: {}, openLinks: {} },
    { hostContext: { theme: "light", displayMode: "inline", platform: "web", toolInfo: { tool } } },
  );
  bridge.oncalltool = async (params) => {
    window.hostCalls.push({ name: params.name, arguments: params.arguments ?? {} });
    return JSON.parse(await window.hostCallTool(params.name, JSON.stringify(params.arguments ?? {})));
  };
  // A real host would open the page in the person's browser; this one notes which it was asked to.
  bridge.onopenlink = async ({ url }) => {
    window.openedLinks.push(url);
    return {};
  };
  bridge.onsizechange = ({ height }) => {
    if (height) iframe.style.height = `${height}px`;
  };
  const initialized = new Promise((resolve) => { bridge.oninitialized = resolve; });
  await bridge.connect(new PostMessageTransport(iframe.contentWindow, iframe.contentWindow));
  iframe.srcdoc = html;
  await initialized;
  await bridge.sendToolInput({ arguments: toolInput });
  await bridge.sendToolResult(toolResult);
  window.bridge = bridge;
  status.textContent = `app initialized: ${JSON.stringify(bridge.getAppVersion())}`;
  return bridge.getAppVersion();
};
status.textContent = "ready";
